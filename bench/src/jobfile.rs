//! fio-style job files: a `[global]` section and one section per job, run
//! in file order. Keys are the workloads' long flag names (`rows-per-batch`
//! or `rows_per_batch`), plus `workload=`; each job is turned back into a
//! command line and parsed by the same clap definitions, so a job file
//! accepts exactly what the command line does.
//!
//! A job's keys override `[global]`'s (`server-env` adds to them). Global
//! keys that a job's workload has no use for are skipped; a job key its
//! workload does not know is an error. Values may name environment
//! variables, as in fio: `${NAME}`, or `${NAME:-default}` when unset or empty.

use std::path::Path;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

use crate::workloads::{Workload, WORKLOADS};
use crate::{Cli, Command};

/// Options that cannot both be set: a job giving one drops the others from `[global]`.
const EXCLUSIVE: &[&[&str]] = &[&["target", "spawn-server"], &["rate-rows", "rate-batches"]];
/// Options that only mean something for a spawned server.
const SPAWN_ONLY: &[&str] = &["binary", "data-path", "snapshot-path", "shards", "server-env"];
/// Options of the run, not of a job.
const RUN_OPTIONS: &[&str] = &["output-format", "job-file"];

pub fn load(path: &Path) -> anyhow::Result<Vec<Workload>> {
    let ini = ini::Ini::load_from_file(path).with_context(|| format!("reading job file {}", path.display()))?;
    let mut global: Vec<(String, String)> = vec![];
    let mut jobs: Vec<(String, Vec<(String, String)>)> = vec![];
    for (section, props) in ini.iter() {
        let keys = props
            .iter()
            .map(|(k, v)| Ok((k.trim().replace('_', "-"), expand(v.trim()).with_context(|| format!("key {k}"))?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}: [{}]", path.display(), section.unwrap_or("global")))?;
        match section {
            None | Some("global") => global.extend(keys),
            Some(name) => jobs.push((name.to_owned(), keys)),
        }
    }
    if jobs.is_empty() {
        bail!("{}: no job sections (only [global])", path.display());
    }
    let root = Cli::command();
    for (key, _) in &global {
        if key != "workload" && !WORKLOADS.iter().any(|w| canonical(&root, w, key).is_some()) {
            bail!("{}: [global] key {key:?} is not an option of any workload", path.display());
        }
    }
    jobs.iter()
        .map(|(name, keys)| job(&root, name, &global, keys).with_context(|| format!("{}: [{name}]", path.display())))
        .collect()
}

/// `${NAME}` and `${NAME:-default}` replaced from the environment.
fn expand(value: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').with_context(|| format!("unclosed ${{ in {value:?}"))?;
        let inner = &rest[start + 2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Ok(v), _) => out.push_str(&v),
            (Err(_), Some(d)) => out.push_str(d),
            (Err(_), None) => bail!("${{{name}}} is not set in the environment"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The long name and whether it may repeat, if `workload` has option `key`
/// (its long name or an alias).
fn canonical(root: &clap::Command, workload: &str, key: &str) -> Option<(String, bool)> {
    let sub = root.find_subcommand(workload)?;
    sub.get_arguments().find_map(|a| {
        let long = a.get_long()?;
        let matches = long == key || a.get_all_aliases().is_some_and(|al| al.contains(&key));
        matches.then(|| (long.to_owned(), matches!(a.get_action(), clap::ArgAction::Append)))
    })
}

fn job(
    root: &clap::Command,
    name: &str,
    global: &[(String, String)],
    own: &[(String, String)],
) -> anyhow::Result<Workload> {
    let workload = own
        .iter()
        .chain(global)
        .find(|(k, _)| k == "workload")
        .map(|(_, v)| v.clone())
        .with_context(|| format!("no workload= ({})", WORKLOADS.join(", ")))?;
    if !WORKLOADS.contains(&workload.as_str()) {
        bail!("unknown workload {workload:?} ({})", WORKLOADS.join(", "));
    }
    // (long name, value, from [global]) in command-line order.
    let mut args: Vec<(String, String, bool)> = vec![];
    for (key, value) in global {
        if let Some((long, _)) = canonical(root, &workload, key) {
            args.push((long, value.clone(), true));
        }
    }
    for (key, value) in own {
        if key == "workload" {
            continue;
        }
        if RUN_OPTIONS.contains(&key.as_str()) {
            bail!("{key} is an option of the whole run: give it on the command line");
        }
        let (long, repeats) = canonical(root, &workload, key)
            .with_context(|| format!("the {workload} workload has no option {key:?}"))?;
        if !repeats {
            let group = EXCLUSIVE.iter().find(|g| g.contains(&long.as_str())).copied().unwrap_or(&[]);
            args.retain(|(k, _, _)| *k != long && !group.contains(&k.as_str()));
        }
        args.push((long, value.clone(), false));
    }
    // [global]'s server options do not reach a job that uses a running server.
    let spawns = workload == "recovery"
        || args.iter().any(|(k, v, _)| {
            k == "spawn-server" && ["", "1", "true", "yes", "y", "on", "t"].contains(&v.to_lowercase().as_str())
        });
    if !spawns {
        args.retain(|(k, _, from_global)| !(*from_global && SPAWN_ONLY.contains(&k.as_str())));
    }
    if !args.iter().any(|(k, _, _)| k == "name") {
        args.push(("name".into(), name.to_owned(), false));
    }
    let argv = std::iter::once("longbow-bench".to_owned())
        .chain(std::iter::once(workload))
        .chain(args.into_iter().map(|(k, v, _)| if v.is_empty() { format!("--{k}") } else { format!("--{k}={v}") }));
    match Cli::try_parse_from(argv) {
        Ok(Cli { command: Some(Command::Workload(w)), .. }) => Ok(w),
        Ok(_) => unreachable!("the first argument is a workload"),
        Err(e) => bail!("{}", e.render().to_string().trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<Workload>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("jobs.ini");
        std::fs::write(&path, text)?;
        load(&path)
    }

    #[test]
    fn global_then_job_keys_in_file_order() {
        let jobs = parse(
            "[global]\nspawn-server=1\nshards=2\nserver-env=LONGBOW_PIN_CORES=false\nduration=3\nreaders=1\n\n\
             [tp]\nworkload=put\nstreams=8\nrows_per_batch=500\n\n\
             [lat]\nworkload=put\nwindow=1\nrate-rows=1000\nserver-env=A=b\n\n\
             [mix]\nworkload=mixed\ntarget=http://127.0.0.1:1\n",
        )
        .expect("valid job file");
        assert_eq!(jobs.len(), 3);
        let Workload::Put(tp) = &jobs[0] else { panic!("put") };
        assert_eq!(tp.job.name.as_deref(), Some("tp"));
        assert_eq!((tp.load.streams, tp.load.rows_per_batch, tp.load.duration), (8, 500, 3.0));
        assert!(tp.server.spawn_server);
        assert_eq!(tp.server.shards, Some(2));
        let Workload::Put(lat) = &jobs[1] else { panic!("put") };
        assert_eq!((lat.load.window, lat.load.rate_rows), (1, Some(1000.0)));
        assert_eq!(lat.server.server_env.len(), 2, "server-env adds to [global]'s");
        let Workload::Mixed(mix) = &jobs[2] else { panic!("mixed") };
        assert!(!mix.server.spawn_server, "target= drops [global] spawn-server");
        assert!(mix.server.shards.is_none() && mix.server.server_env.is_empty(), "no [global] server options");
        assert_eq!(mix.server.target.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(mix.readers, 1);
    }

    #[test]
    fn mistakes_are_errors() {
        let err = |text: &str| format!("{:#}", parse(text).expect_err(text));
        assert!(err("[a]\nstreams=1\n").contains("no workload"));
        assert!(err("[a]\nworkload=fly\n").contains("unknown workload"));
        assert!(err("[a]\nworkload=get\nwindow=4\n").contains("no option \"window\""));
        assert!(err("[global]\nwindw=4\n[a]\nworkload=put\n").contains("not an option of any workload"));
        assert!(err("[a]\nworkload=put\nstreams=many\n").contains("invalid value"));
        assert!(err("[a]\nworkload=put\noutput-format=json\n").contains("whole run"));
        assert!(err("[global]\nworkload=put\n").contains("no job sections"));
    }

    #[test]
    fn environment_expansion() {
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(expand("${HOME}/x").expect("set"), format!("{home}/x"));
        assert_eq!(expand("a${LONGBOW_BENCH_SURELY_UNSET:-7}b").expect("default"), "a7b");
        assert_eq!(expand("plain").expect("no variables"), "plain");
        assert!(expand("${LONGBOW_BENCH_SURELY_UNSET}").is_err());
        assert!(expand("${OPEN").is_err());
    }

    #[test]
    fn shipped_job_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        assert!(load(&dir.join("example.ini")).expect("example.ini parses").len() >= 4);
        assert!(load(&dir.join("standard.ini")).expect("standard.ini parses").len() >= 6);
    }
}
