//! NumPy `.npy` files (format 1.0 written; 1.0–3.0 read), C order: little-endian f16 and f32,
//! int8, and bytes of packed sign bits.
//!
//! Format: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.
//! Files written here open with `np.load(path, mmap_mode="r")`; they are read back through a
//! memory map so a shard is never copied whole into memory just to be looked at.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use memmap2::Mmap;

use super::Dtype;
use crate::atomic_write::write_atomic;
use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the data start to 64 bytes so memory-mapped arrays are SIMD-aligned.
const ALIGN: usize = 64;

/// An element type that can be stored in a `.npy` file.
pub trait Element: Copy + Send + Sync + 'static {
    /// The element type of the file.
    const DTYPE: Dtype;
    /// Appends the little-endian bytes of `values` to `out`.
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>);
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
}

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
}

impl Element for i8 {
    const DTYPE: Dtype = Dtype::I8;
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&v| v as u8));
    }
}

/// Bytes of packed sign bits (a [`Dtype::Bit`] store's features).
impl Element for u8 {
    const DTYPE: Dtype = Dtype::Bit;
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend_from_slice(values);
    }
}

fn descr(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "<f2",
        Dtype::F32 => "<f4",
        Dtype::I8 => "|i1",
        // Packed sign bits are stored as plain bytes.
        Dtype::Bit => "|u1",
    }
}

/// The complete version 1.0 header (magic, version, length, dict, padding) for an array of
/// `dtype` and `shape` in C order; its length is a multiple of 64.
pub fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // Python tuple syntax: a 1-tuple needs its trailing comma.
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(dtype)
    );
    // Pad with spaces so that magic(6) + version(2) + len(2) + dict + '\n' is 64-aligned.
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(ALIGN) - unpadded,
    ));
    dict.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The dict of a 2-D array is ~70 bytes; u16 overflow would need thousands of dimensions.
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `data` (C order, `shape`) as a `.npy` stream.
pub fn write<T: Element>(w: &mut impl Write, shape: &[usize], data: &[T]) -> io::Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("npy shape {shape:?} needs {n} values, got {}", data.len()),
        ));
    }
    w.write_all(&header(T::DTYPE, shape))?;
    // Convert in bounded chunks: one byte buffer of a whole shard would double its memory.
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks(1 << 14) {
        buf.clear();
        T::extend_le_bytes(chunk, &mut buf);
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Writes `data` as a `.npy` file atomically (temp file, fsync, rename); returns its size.
pub fn write_file<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<u64> {
    write_atomic(path, |file| {
        let mut w = io::BufWriter::new(file);
        write(&mut w, shape, data).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))
    })
}

/// A memory-mapped `.npy` file holding an f16, f32, int8 or byte array in C order.
pub struct NpyFile {
    path: PathBuf,
    map: Mmap,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: usize,
}

impl NpyFile {
    /// Maps `path` and checks its header and that the data length matches the shape.
    pub fn open(path: &Path) -> Result<NpyFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. Store files are replaced by rename, never modified in
        // place, so the mapped inode does not change under us.
        // Populated: the pages are mapped in one call, not faulted in 4 KiB at a time while
        // scoring (which reads every byte anyway).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Store {
            path: path.to_path_buf(),
            msg,
        };
        let (dtype, shape, offset) =
            parse_header(&map).map_err(|m| bad(format!("not a valid .npy file: {m}")))?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.file_size()))
            .ok_or_else(|| bad(format!("npy shape {shape:?} overflows")))?;
        let found = map.len() - offset;
        if found != n {
            let what = if found < n { "truncated" } else { "corrupt" };
            return Err(bad(format!(
                "{what} .npy file: shape {shape:?} of {} needs {n} data bytes, found {found}",
                descr(dtype)
            )));
        }
        Ok(NpyFile {
            path: path.to_path_buf(),
            map,
            dtype,
            shape,
            offset,
        })
    }

    /// The file this array was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The element type stored in the file.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The array shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Length of the first axis (1 for a 0-d array).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row: the product of all axes after the first (1 for a 1-D array).
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    fn data(&self) -> &[u8] {
        &self.map[self.offset..]
    }

    /// The raw bytes of rows `r0..r1` (int8 values or packed bits as stored).
    /// Panics if the range is out of bounds: a caller error, not a data error.
    pub fn row_bytes(&self, r0: usize, r1: usize) -> &[u8] {
        let row = self.cols() * self.dtype.file_size();
        &self.data()[r0 * row..r1 * row]
    }

    /// The data as an f32 slice without copying, when the file is f32 and the data start is
    /// suitably aligned (always true for files written here) on a little-endian machine.
    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        if self.dtype != Dtype::F32 || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32; prefix/suffix checks reject misalignment.
        let (pre, mid, post) = unsafe { self.data().align_to::<f32>() };
        (pre.is_empty() && post.is_empty()).then_some(mid)
    }

    /// Converts rows `r0..r1` to f32 into `out` (length `(r1 - r0) * cols`): the stored
    /// element values widened (int8 without its row scale, packed bit bytes as 0–255; the
    /// store dequantizes those).
    /// Panics if the range or `out` is out of bounds: a caller error, not a data error.
    pub fn copy_rows_f32(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let cols = self.cols();
        let size = self.dtype.file_size();
        let bytes = &self.data()[r0 * cols * size..r1 * cols * size];
        assert_eq!(out.len(), (r1 - r0) * cols, "copy_rows_f32: output length");
        match self.dtype {
            Dtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Dtype::I8 => {
                for (o, &b) in out.iter_mut().zip(bytes) {
                    *o = b as i8 as f32;
                }
            }
            Dtype::Bit => {
                for (o, &b) in out.iter_mut().zip(bytes) {
                    *o = b as f32;
                }
            }
            Dtype::F16 => {
                // SAFETY: every bit pattern is a valid u16; misalignment falls back below.
                let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
                if pre.is_empty() && post.is_empty() && cfg!(target_endian = "little") {
                    // Vectorized (F16C when the CPU has it, detected at run time).
                    mid.reinterpret_cast::<f16>().convert_to_f32_slice(out);
                } else {
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }
            }
        }
    }

    /// The whole array converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        if let Some(s) = self.as_f32_slice() {
            return s.to_vec();
        }
        let mut out = vec![0f32; self.rows() * self.cols()];
        self.copy_rows_f32(0, self.rows(), &mut out);
        out
    }
}

/// The dtype and shape in a `.npy` file's header, read without mapping the data (to check a
/// shard against its manifest entry cheaply, e.g. on resume).
pub fn read_header(path: &Path) -> Result<(Dtype, Vec<usize>)> {
    use std::io::Read;
    let bad = |msg: String| Error::Store {
        path: path.to_path_buf(),
        msg,
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    // Our writer pads the header to 128 bytes; numpy's headers are short too. A longer one is
    // read whole below.
    let mut head = Vec::with_capacity(4096);
    (&mut file)
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let parsed = match parse_header(&head) {
        Err(m) if m.contains("truncated") && head.len() == 4096 => {
            file.read_to_end(&mut head)
                .map_err(|e| Error::io(path, e))?;
            parse_header(&head)
        }
        r => r,
    };
    let (dtype, shape, _) = parsed.map_err(|m| bad(format!("not a valid .npy file: {m}")))?;
    Ok((dtype, shape))
}

/// Parses magic, version and header dict; returns dtype, shape and the data offset.
fn parse_header(bytes: &[u8]) -> std::result::Result<(Dtype, Vec<usize>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}.{}", bytes[7])),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or("header runs past the end of the file (truncated)")?;
    let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not text")?;
    let descr = dict_value(text, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = match descr {
        "<f2" => Dtype::F16,
        "<f4" => Dtype::F32,
        "|i1" | "<i1" => Dtype::I8,
        "|u1" | "<u1" => Dtype::Bit,
        other => {
            return Err(format!(
                "dtype {other} is not supported (expected <f2, <f4, |i1 or |u1)"
            ))
        }
    };
    let shape_text = dict_value(text, "shape")?;
    let shape = shape_text
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fortran = dict_value(text, "fortran_order")?;
    if fortran == "True" && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err("Fortran-order arrays are not supported; save with C order".into());
    }
    Ok((dtype, shape, end))
}

/// The raw text of `key`'s value in a numpy header dict (a quoted string, a word or a tuple).
fn dict_value<'a>(text: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let missing = || format!("header has no '{key}'");
    let at = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = text[at + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(missing)?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
        rest[1..].find(q).map(|i| i + 2)
    } else {
        rest.find([',', '}'])
    };
    end.map(|e| rest[..e].trim()).ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    #[test]
    fn header_is_64_aligned_and_parses_back() {
        for shape in [vec![3usize], vec![3, 4], vec![0, 7], vec![123456, 216064]] {
            for dtype in [Dtype::F16, Dtype::F32] {
                let h = header(dtype, &shape);
                assert_eq!(h.len() % 64, 0, "{shape:?}");
                assert_eq!(*h.last().unwrap(), b'\n');
                let (d, s, off) = parse_header(&h).unwrap();
                assert_eq!((d, s, off), (dtype, shape.clone(), h.len()));
            }
        }
        let h = String::from_utf8_lossy(&header(Dtype::F32, &[5])).into_owned();
        assert!(h.contains("'shape': (5,)"), "{h}");
    }

    #[test]
    fn round_trip_f32_and_f16() {
        let dir = temp_dir("npy_rt");
        let data: Vec<f32> = (0..15).map(|i| i as f32 * 0.37 - 2.0).collect();
        let p = dir.join("a.npy");
        write_file(&p, &[3, 5], &data).unwrap();
        let f = NpyFile::open(&p).unwrap();
        assert_eq!(
            (f.dtype(), f.shape(), f.rows(), f.cols()),
            (Dtype::F32, &[3usize, 5][..], 3, 5)
        );
        assert_eq!(f.as_f32_slice().unwrap(), &data[..]);
        assert_eq!(f.to_f32_vec(), data);

        let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        let p = dir.join("b.npy");
        write_file(&p, &[15], &h).unwrap();
        let f = NpyFile::open(&p).unwrap();
        assert_eq!((f.dtype(), f.rows(), f.cols()), (Dtype::F16, 15, 1));
        assert!(f.as_f32_slice().is_none());
        let back = f.to_f32_vec();
        for (x, y) in data.iter().zip(&back) {
            assert_eq!(f16::from_f32(*x).to_f32(), *y);
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0));
        }
        let mut part = vec![0f32; 4];
        f.copy_rows_f32(5, 9, &mut part);
        assert_eq!(part, back[5..9]);
    }

    #[test]
    fn truncated_and_foreign_files_give_errors() {
        let dir = temp_dir("npy_bad");
        let p = dir.join("t.npy");
        write_file(&p, &[4, 4], &[1f32; 16]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let msg = NpyFile::open(&p).err().unwrap().to_string();
        assert!(msg.contains("truncated") && msg.contains("t.npy"), "{msg}");
        std::fs::write(&p, &bytes[..30]).unwrap();
        let msg = NpyFile::open(&p).err().unwrap().to_string();
        assert!(msg.contains("truncated"), "{msg}");
        std::fs::write(&p, b"hello world, not numpy").unwrap();
        let msg = NpyFile::open(&p).err().unwrap().to_string();
        assert!(msg.contains("magic"), "{msg}");
        let mut other = header(Dtype::F32, &[2]);
        let at = other.windows(3).position(|w| w == b"<f4").unwrap();
        other[at..at + 3].copy_from_slice(b"<i8");
        other.extend_from_slice(&[0u8; 16]);
        std::fs::write(&p, &other).unwrap();
        let msg = NpyFile::open(&p).err().unwrap().to_string();
        assert!(msg.contains("<i8"), "{msg}");
        assert!(NpyFile::open(&dir.join("missing.npy")).is_err());
    }

    /// Reads files numpy wrote (with its own header layout) and checks numpy reads ours.
    #[test]
    fn numpy_interop() {
        if !crate::store::tests::python_has("numpy") {
            eprintln!("numpy_interop: python3 with numpy not found; skipped (CI installs numpy)");
            return;
        }
        let dir = temp_dir("npy_numpy");
        let data: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 3.0).collect();
        write_file(&dir.join("f32.npy"), &[3, 4], &data).unwrap();
        let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
        write_file(&dir.join("f16.npy"), &[3, 4], &h).unwrap();
        write_file(&dir.join("v.npy"), &[12], &data).unwrap();
        let script = r#"
import sys, numpy as np
d = sys.argv[1]
ref = ((np.arange(12, dtype=np.float32) - 5.5) / 3.0)
a = np.load(d + '/f32.npy', mmap_mode='r'); assert a.dtype == np.float32 and a.shape == (3, 4)
assert np.array_equal(np.asarray(a), ref.reshape(3, 4))
b = np.load(d + '/f16.npy', mmap_mode='r'); assert b.dtype == np.float16 and b.shape == (3, 4)
assert np.array_equal(np.asarray(b), ref.astype(np.float16).reshape(3, 4))
v = np.load(d + '/v.npy', mmap_mode='r'); assert v.shape == (12,) and np.array_equal(v, ref)
np.save(d + '/np32.npy', ref.reshape(4, 3))
np.save(d + '/np16.npy', ref.astype(np.float16))
"#;
        crate::store::tests::python(script, &[dir.to_str().unwrap()]);
        let a = NpyFile::open(&dir.join("np32.npy")).unwrap();
        assert_eq!(
            (a.shape(), a.to_f32_vec()),
            (&[4usize, 3][..], data.clone())
        );
        let b = NpyFile::open(&dir.join("np16.npy")).unwrap();
        let want: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
        assert_eq!((b.shape(), b.to_f32_vec()), (&[12usize][..], want));
    }
}
