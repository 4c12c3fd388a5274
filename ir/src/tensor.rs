//! Tensor data and the arenas that hold weights and graphs.
//!
//! Weights are never copied on import when they can be mapped: `Storage::Mapped` points into a
//! memory-mapped file (the model itself or its external data) through the `Backing` trait, so `ir`
//! needs no knowledge of files. Passes that change a weight create a new tensor (copy-on-write);
//! tied weights therefore never change behind a reader.

use crate::types::DType;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A typed index into an [`Arena`].
pub struct Handle<T> {
    idx: u32,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Handle<T> {
    fn new(idx: usize) -> Self {
        Handle {
            idx: idx as u32,
            _marker: PhantomData,
        }
    }
    /// A stable small number, for printing and hashing only.
    pub fn index(self) -> usize {
        self.idx as usize
    }
}
impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Handle<T> {}
impl<T> PartialEq for Handle<T> {
    fn eq(&self, o: &Self) -> bool {
        self.idx == o.idx
    }
}
impl<T> Eq for Handle<T> {}
impl<T> std::hash::Hash for Handle<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.idx.hash(h)
    }
}
impl<T> PartialOrd for Handle<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Handle<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.idx.cmp(&o.idx)
    }
}
impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.idx)
    }
}

/// An append-only arena addressed by typed handles.
#[derive(Debug, Clone)]
pub struct Arena<T> {
    items: Vec<T>,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena { items: Vec::new() }
    }
}

impl<T> Arena<T> {
    pub fn alloc(&mut self, v: T) -> Handle<T> {
        self.items.push(v);
        Handle::new(self.items.len() - 1)
    }
    pub fn get(&self, h: Handle<T>) -> &T {
        &self.items[h.index()]
    }
    pub fn get_mut(&mut self, h: Handle<T>) -> &mut T {
        &mut self.items[h.index()]
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (Handle<T>, &T)> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, t)| (Handle::new(i), t))
    }
}

/// Bytes that live elsewhere (a memory-mapped file). Implemented by the frontends.
pub trait Backing: Send + Sync + fmt::Debug {
    fn bytes(&self) -> &[u8];
    /// A description for error messages (the file path).
    fn describe(&self) -> String;
    /// The open file behind `bytes()`, when there is one: writers can then copy ranges inside
    /// the kernel (`copy_file_range`) instead of through the mapping.
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
}

/// Where the bytes of a tensor are.
#[derive(Clone)]
pub enum Storage {
    /// Little-endian element bytes owned by the IR.
    Bytes(Arc<[u8]>),
    /// A byte range of a mapped file.
    Mapped {
        backing: Arc<dyn Backing>,
        offset: usize,
        len: usize,
    },
    /// String elements (dtype `str`).
    Strings(Vec<Vec<u8>>),
    /// The data was elided in a textual dump; only its hash and size are known.
    Elided { hash: u64, len: u64 },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Bytes(b) => write!(f, "Bytes({} B)", b.len()),
            Storage::Mapped {
                backing,
                offset,
                len,
            } => {
                write!(f, "Mapped({}@{offset}+{len})", backing.describe())
            }
            Storage::Strings(s) => write!(f, "Strings({})", s.len()),
            Storage::Elided { hash, len } => write!(f, "Elided({hash:016x}, {len} B)"),
        }
    }
}

/// A constant tensor: an initializer or a tensor-valued attribute.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub storage: Storage,
    /// The name the tensor had inside a tensor attribute (initializers are named by their value).
    pub name: String,
    pub doc: String,
}

pub type TensorId = Handle<TensorData>;

impl TensorData {
    pub fn from_bytes(dtype: DType, dims: Vec<i64>, bytes: Vec<u8>) -> Self {
        TensorData {
            dtype,
            dims,
            storage: Storage::Bytes(bytes.into()),
            name: String::new(),
            doc: String::new(),
        }
    }

    pub fn from_f32(dims: Vec<i64>, vals: &[f32]) -> Self {
        // On a little-endian host the f32 memory is already the stored bytes: one copy into
        // the shared buffer (a model's worth of merged weights is hundreds of MB, and the
        // per-element path took longer than computing them).
        let storage = if cfg!(target_endian = "little") {
            Storage::Bytes(Arc::from(bytemuck::cast_slice::<f32, u8>(vals)))
        } else {
            Storage::Bytes(vals.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        TensorData {
            dtype: DType::F32,
            dims,
            storage,
            name: String::new(),
            doc: String::new(),
        }
    }

    pub fn from_i64(dims: Vec<i64>, vals: &[i64]) -> Self {
        let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(DType::I64, dims, bytes)
    }

    /// Number of elements, `None` when a dim is negative or the product overflows.
    pub fn numel(&self) -> Option<u64> {
        numel(&self.dims)
    }

    /// The raw bytes, when they are available (not elided, not strings).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Bytes(b) => Some(b),
            Storage::Mapped {
                backing,
                offset,
                len,
            } => backing.bytes().get(*offset..offset + len),
            Storage::Strings(_) | Storage::Elided { .. } => None,
        }
    }

    /// Size of the data in bytes (strings count their lengths).
    pub fn byte_len(&self) -> u64 {
        match &self.storage {
            Storage::Bytes(b) => b.len() as u64,
            Storage::Mapped { len, .. } => *len as u64,
            Storage::Strings(s) => s.iter().map(|x| x.len() as u64).sum(),
            Storage::Elided { len, .. } => *len,
        }
    }

    /// A content hash of the data bytes (not of dtype or dims, which print beside it), stable
    /// across runs and machines.
    pub fn content_hash(&self) -> u64 {
        if let Storage::Elided { hash, .. } = self.storage {
            return hash;
        }
        let mut h = Hasher64::new();
        match &self.storage {
            Storage::Strings(s) => {
                for x in s {
                    h.write(&(x.len() as u64).to_le_bytes());
                    h.write(x);
                }
            }
            _ => h.write(self.bytes().unwrap_or(&[])),
        }
        h.finish()
    }

    /// Elements as f64, for numeric dtypes that the IR can decode.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let b = self.bytes()?;
        crate::numeric::decode_f64(self.dtype, b)
    }

    /// Elements as i64 (integer and bool dtypes).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = self.bytes()?;
        crate::numeric::decode_i64(self.dtype, b)
    }
}

/// Product of dims with overflow and sign checks.
pub fn numel(dims: &[i64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| {
        if d < 0 {
            None
        } else {
            acc.checked_mul(d as u64)
        }
    })
}

/// A fast, portable 64-bit content hash (not cryptographic): words are mixed with a multiply-rotate.
pub struct Hasher64 {
    state: u64,
    len: u64,
}

impl Default for Hasher64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher64 {
    pub fn new() -> Self {
        Hasher64 {
            state: 0x243F_6A88_85A3_08D3,
            len: 0,
        }
    }
    fn mix(&mut self, w: u64) {
        self.state = (self.state ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(31);
    }
    pub fn write(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ 0xFF00_0000_0000_0000);
        }
    }
    pub fn finish(&self) -> u64 {
        let mut s = self.state ^ self.len.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        s ^= s >> 33;
        s = s.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        s ^= s >> 33;
        s
    }
}
