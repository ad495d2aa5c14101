//! Exact k-NN distance functions: `l2_distance`, `cosine_distance` and
//! `inner_product` of a `FixedSizeList<Float32>` column (the stored
//! vectors) and one query vector (a literal such as `[0.1, 0.2, ...]` or a
//! bound parameter).
//!
//! Each is one pass over the column's contiguous child values, `dim` floats
//! per row, against the query slice. The kernels are written as fixed-width
//! lanes of independent accumulators (no loop-carried dependency on one
//! float sum), so LLVM vectorizes them without `-ffast-math`: the release
//! build's inner loops are packed `vsubps`/`vmulps`/`vaddps` (SSE or AVX,
//! see docs/architecture.md). `ORDER BY d LIMIT k` over them is planned by
//! DataFusion as a TopK sort (`SortExec: TopK(fetch=k)`), which keeps k rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float32Builder};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// Accumulator lanes per kernel: 16 floats = one AVX-512 register or two
/// AVX ones; independent sums let the loop vectorize.
const LANES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Euclidean distance, `sqrt(sum((a - b)^2))` (as DuckDB's `array_distance`).
    L2,
    /// `1 - a.b / (|a| |b|)`.
    Cosine,
    /// `a.b` (larger is closer: order descending).
    InnerProduct,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2_distance",
            Metric::Cosine => "cosine_distance",
            Metric::InnerProduct => "inner_product",
        }
    }
}

/// The three functions, for registering on a session.
pub fn udfs() -> Vec<ScalarUDF> {
    [Metric::L2, Metric::Cosine, Metric::InnerProduct].into_iter().map(|m| ScalarUDF::from(Distance::new(m))).collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Distance {
    metric: Metric,
    signature: Signature,
}

impl Distance {
    fn new(metric: Metric) -> Self {
        Self { metric, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Distance {
    fn name(&self) -> &str {
        self.metric.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match &args[0] {
            DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float32 => {}
            other => {
                return plan_err!(
                    "{}: the first argument must be a FixedSizeList<Float32> column (a vector), not {other}",
                    self.name()
                )
            }
        }
        match &args[1] {
            DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f)
                if f.data_type().is_numeric() || f.data_type().is_null() => {}
            DataType::Null => {}
            other => return plan_err!("{}: the second argument must be a list of numbers, not {other}", self.name()),
        }
        Ok(DataType::Float32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let [vectors, query] = args.args.as_slice() else {
            return exec_err!("{} takes two arguments", self.name());
        };
        let vectors = vectors.to_array(rows)?;
        let vectors = vectors.as_fixed_size_list();
        match query {
            ColumnarValue::Scalar(q) => {
                let Some(q) = query_vector(q)? else {
                    return Ok(ColumnarValue::Scalar(ScalarValue::Float32(None)));
                };
                Ok(ColumnarValue::Array(Arc::new(distances(self.metric, vectors, &q)?)))
            }
            // A vector per row on both sides (a join): pairwise over the two
            // child buffers when both are FixedSizeList<Float32>.
            ColumnarValue::Array(qs) => {
                if let Some(qs) = qs.as_fixed_size_list_opt().filter(|q| q.value_type() == DataType::Float32) {
                    return Ok(ColumnarValue::Array(Arc::new(pairwise(self.metric, vectors, qs)?)));
                }
                let mut out = Float32Builder::with_capacity(rows);
                for i in 0..rows {
                    let q = query_vector(&ScalarValue::try_from_array(qs, i)?)?;
                    match q {
                        Some(q) if !vectors.is_null(i) => {
                            let one = distances(self.metric, &vectors.slice(i, 1), &q)?;
                            out.append_option(one.is_valid(0).then(|| one.value(0)));
                        }
                        _ => out.append_null(),
                    }
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
        }
    }
}

/// The query vector as f32s; `None` for a null one.
fn query_vector(q: &ScalarValue) -> DfResult<Option<Vec<f32>>> {
    let values: ArrayRef = match q {
        ScalarValue::Null => return Ok(None),
        ScalarValue::FixedSizeList(a) if a.is_valid(0) => a.value(0),
        ScalarValue::List(a) if a.is_valid(0) => a.value(0),
        ScalarValue::LargeList(a) if a.is_valid(0) => a.value(0),
        ScalarValue::FixedSizeList(_) | ScalarValue::List(_) | ScalarValue::LargeList(_) => return Ok(None),
        other => return exec_err!("the query vector must be a list of numbers, not {}", other.data_type()),
    };
    if values.null_count() > 0 {
        return exec_err!("the query vector has null components");
    }
    let v = match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => values.as_primitive::<Float64Type>().values().iter().map(|x| *x as f32).collect(),
        _ => {
            let cast = arrow::compute::cast(&values, &DataType::Float32)?;
            cast.as_primitive::<Float32Type>().values().to_vec()
        }
    };
    Ok(Some(v))
}

/// One distance per row of `vectors` to `q`, over the contiguous child
/// values. Null rows give null.
fn distances(metric: Metric, vectors: &FixedSizeListArray, q: &[f32]) -> DfResult<Float32Array> {
    let dim = vectors.value_length() as usize;
    if dim != q.len() {
        return exec_err!("the query vector has {} components, the column's vectors {dim}", q.len());
    }
    let child = vectors
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| datafusion::common::DataFusionError::Execution("vector column values must be Float32".into()))?;
    // The list array may be a slice of its child: start at its offset.
    let start = vectors.offset() * dim;
    let values = &child.values()[start..start + vectors.len() * dim];
    let mut out = Vec::with_capacity(vectors.len());
    match metric {
        Metric::L2 => out.extend(values.chunks_exact(dim.max(1)).map(|v| l2_squared(v, q).sqrt())),
        Metric::InnerProduct => out.extend(values.chunks_exact(dim.max(1)).map(|v| dot(v, q))),
        Metric::Cosine => {
            let qn = dot(q, q).sqrt();
            out.extend(values.chunks_exact(dim.max(1)).map(|v| {
                let d = dot(v, v).sqrt() * qn;
                if d == 0.0 {
                    f32::NAN
                } else {
                    1.0 - dot(v, q) / d
                }
            }))
        }
    }
    if dim == 0 {
        out = vec![0.0; vectors.len()];
    }
    Ok(Float32Array::new(out.into(), vectors.nulls().cloned()))
}

/// The contiguous floats of a `FixedSizeList<Float32>`'s rows (the list
/// may be a slice of its child: from its offset).
fn child_values(l: &FixedSizeListArray) -> DfResult<&[f32]> {
    let dim = l.value_length() as usize;
    let child = l
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| datafusion::common::DataFusionError::Execution("vector column values must be Float32".into()))?;
    let start = l.offset() * dim;
    Ok(&child.values()[start..start + l.len() * dim])
}

/// Row `i` of `a` against row `i` of `b`.
fn pairwise(metric: Metric, a: &FixedSizeListArray, b: &FixedSizeListArray) -> DfResult<Float32Array> {
    let dim = a.value_length() as usize;
    if dim != b.value_length() as usize {
        return exec_err!("vectors of {dim} and {} components", b.value_length());
    }
    let (va, vb) = (child_values(a)?, child_values(b)?);
    let d = dim.max(1);
    let out: Vec<f32> = va
        .chunks_exact(d)
        .zip(vb.chunks_exact(d))
        .map(|(x, y)| match metric {
            Metric::L2 => l2_squared(x, y).sqrt(),
            Metric::InnerProduct => dot(x, y),
            Metric::Cosine => {
                let n = dot(x, x).sqrt() * dot(y, y).sqrt();
                if n == 0.0 {
                    f32::NAN
                } else {
                    1.0 - dot(x, y) / n
                }
            }
        })
        .collect();
    let nulls = arrow::buffer::NullBuffer::union(a.nulls(), b.nulls());
    Ok(Float32Array::new(out.into(), nulls))
}

/// `sum((a - b)^2)` in [`LANES`] independent accumulators.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let (x, y): (&[f32; LANES], &[f32; LANES]) = (x.try_into().expect("lane"), y.try_into().expect("lane"));
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        tail += d * d;
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum(a * b)` in [`LANES`] independent accumulators.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let (x, y): (&[f32; LANES], &[f32; LANES]) = (x.try_into().expect("lane"), y.try_into().expect("lane"));
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn column(rows: &[Vec<f32>]) -> FixedSizeListArray {
        let dim = rows[0].len() as i32;
        let values = Float32Array::from(rows.concat());
        FixedSizeListArray::new(Arc::new(Field::new("item", DataType::Float32, true)), dim, Arc::new(values), None)
    }

    fn naive(metric: Metric, v: &[f32], q: &[f32]) -> f32 {
        let dot: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
        match metric {
            Metric::L2 => v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt(),
            Metric::InnerProduct => dot,
            Metric::Cosine => {
                1.0 - dot / (v.iter().map(|a| a * a).sum::<f32>().sqrt() * q.iter().map(|a| a * a).sum::<f32>().sqrt())
            }
        }
    }

    #[test]
    fn kernels_match_the_naive_sums() {
        for dim in [1usize, 3, 16, 17, 128, 130] {
            let rows: Vec<Vec<f32>> =
                (0..7).map(|r| (0..dim).map(|i| ((r * 31 + i * 7) % 13) as f32 * 0.25 - 1.0).collect()).collect();
            let q: Vec<f32> = (0..dim).map(|i| (i % 5) as f32 * 0.5 - 0.75).collect();
            let col = column(&rows);
            for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
                let got = distances(metric, &col, &q).unwrap();
                for (r, row) in rows.iter().enumerate() {
                    let want = naive(metric, row, &q);
                    let g = got.value(r);
                    assert!(
                        (g - want).abs() <= 1e-4 * want.abs().max(1.0) || (g.is_nan() && want.is_nan()),
                        "{metric:?} dim {dim} row {r}: {g} vs {want}"
                    );
                }
                // A slice of the column starts at its own offset.
                let sliced = distances(metric, &col.slice(2, 3), &q).unwrap();
                assert_eq!(sliced.value(0), got.value(2));
                // Row against row: the same as against the one query.
                let qs = column(&vec![q.clone(); rows.len()]);
                let pairs = pairwise(metric, &col, &qs).unwrap();
                let bits = |a: &Float32Array| a.values().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&pairs), bits(&got), "{metric:?} dim {dim}");
            }
        }
    }

    #[test]
    fn a_wrong_dimension_is_an_error() {
        let col = column(&[vec![1.0, 2.0]]);
        assert!(distances(Metric::L2, &col, &[1.0]).is_err());
    }
}
