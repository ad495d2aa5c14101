//! What a metadata call costs on a shard's thread, against the same call
//! moved to glommio's blocking pool: the measurement behind keeping
//! `rename`, `stat`, `list` and `remove` inline (docs/architecture.md,
//! "Which calls block").
//!
//! `cargo run --release -p longbow-engine --example fs_calls -- DIR [N]`
//! creates N small files in DIR (default 2000) and times, per call and
//! each way: `stat`, `rename`, `list` (of a directory of 16 files) and
//! `remove`. Prints the median and p99 in microseconds.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn report(name: &str, inline: &mut [f64], pooled: &mut [f64]) {
    inline.sort_by(f64::total_cmp);
    pooled.sort_by(f64::total_cmp);
    println!(
        "{name:8} inline p50 {:7.1} µs p99 {:7.1} µs | blocking pool p50 {:7.1} µs p99 {:7.1} µs",
        percentile(inline, 0.5),
        percentile(inline, 0.99),
        percentile(pooled, 0.5),
        percentile(pooled, 0.99)
    );
}

async fn time_both<F>(n: usize, call: F) -> (Vec<f64>, Vec<f64>)
where
    F: Fn(usize, bool) -> Box<dyn FnOnce() + Send> + Clone + 'static,
{
    let (mut inline, mut pooled) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let f = call(i, false);
        let t = Instant::now();
        f();
        inline.push(t.elapsed().as_secs_f64() * 1e6);
        let f = call(i, true);
        let t = Instant::now();
        glommio::executor().spawn_blocking(f).await;
        pooled.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (inline, pooled)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: fs_calls DIR [N]"));
    let n: usize = args.next().map_or(2000, |s| s.parse().expect("N is a number"));
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir_in(&dir).unwrap();
    let root = work.path().to_owned();
    let name = move |root: &Path, i: usize, pooled: bool, suffix: &str| {
        root.join(format!("{}-{i}{suffix}", if pooled { "p" } else { "i" }))
    };
    for i in 0..n {
        for pooled in [false, true] {
            std::fs::write(name(&root, i, pooled, ""), [0u8; 512]).unwrap();
        }
    }
    let listed = root.join("listed");
    std::fs::create_dir(&listed).unwrap();
    for i in 0..16 {
        std::fs::write(listed.join(format!("{i}")), b"x").unwrap();
    }
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let r = root.clone();
            let (mut a, mut b) = time_both(n, move |i, p| {
                let path = name(&r, i, p, "");
                Box::new(move || {
                    std::fs::metadata(&path).unwrap();
                })
            })
            .await;
            report("stat", &mut a, &mut b);
            let r = root.clone();
            let (mut a, mut b) = time_both(n, move |i, p| {
                let (from, to) = (name(&r, i, p, ""), name(&r, i, p, ".renamed"));
                Box::new(move || std::fs::rename(&from, &to).unwrap())
            })
            .await;
            report("rename", &mut a, &mut b);
            let l = listed.clone();
            let (mut a, mut b) = time_both(n, move |_, _| {
                let l = l.clone();
                Box::new(move || {
                    std::fs::read_dir(&l).unwrap().for_each(drop);
                })
            })
            .await;
            report("list", &mut a, &mut b);
            let r = root.clone();
            let (mut a, mut b) = time_both(n, move |i, p| {
                let path = name(&r, i, p, ".renamed");
                Box::new(move || std::fs::remove_file(&path).unwrap())
            })
            .await;
            report("remove", &mut a, &mut b);
        })
        .unwrap()
        .join()
        .unwrap();
}
