//! Reading GGUF files: header and metadata through candle's parser, tensor bytes raw so our
//! kernels run directly on the GGML blocks.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

/// An open GGUF file: parsed header plus a handle to read tensor data on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let content =
            Content::read(&mut reader).map_err(|e| anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), content, reader })
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self.meta(key).ok_or_else(|| anyhow!("{}: missing metadata key `{key}`", self.path.display()))?;
        // Writers differ in integer widths; accept any non-negative integer that fits.
        let n: u64 = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            _ => bail!("{}: metadata `{key}` is not a non-negative integer", self.path.display()),
        };
        u32::try_from(n).map_err(|_| anyhow!("{}: metadata `{key}` = {n} is too large", self.path.display()))
    }

    pub fn meta_f32(&self, key: &str) -> Result<f32> {
        match self.meta(key) {
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            Some(_) => bail!("{}: metadata `{key}` is not a float", self.path.display()),
            None => bail!("{}: missing metadata key `{key}`", self.path.display()),
        }
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Strings of an array-of-strings key (e.g. `tokenizer.ggml.tokens`).
    pub fn meta_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.meta(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// (dtype, dims as candle reports them: outermost first, i.e. `[rows, cols]` for matrices).
    pub fn tensor_meta(&self, name: &str) -> Result<(GgmlDType, Vec<usize>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.path.display()))?;
        Ok((info.ggml_dtype, info.shape.dims().to_vec()))
    }

    /// Raw GGML bytes of one tensor (huge-page backed when large).
    pub fn tensor_bytes(&mut self, name: &str) -> Result<super::hugebuf::HugeBuf> {
        let (dtype, dims) = self.tensor_meta(name)?;
        let elems: usize = dims.iter().product();
        if elems % dtype.block_size() != 0 {
            bail!("{}: tensor `{name}` has {elems} elements, not a multiple of its block size", self.path.display());
        }
        let size = elems / dtype.block_size() * dtype.type_size();
        let offset = self.content.tensor_data_offset + self.content.tensor_infos[name].offset;
        self.reader.seek(SeekFrom::Start(offset))?;
        let mut buf = super::hugebuf::HugeBuf::zeroed(size);
        self.reader
            .read_exact(&mut buf)
            .with_context(|| format!("{}: tensor `{name}` is truncated", self.path.display()))?;
        Ok(buf)
    }

    /// One tensor dequantized to f32 (any GGML type candle knows).
    pub fn tensor_f32(&mut self, name: &str) -> Result<Vec<f32>> {
        let (dtype, _) = self.tensor_meta(name)?;
        if dtype == GgmlDType::F32 {
            let bytes = self.tensor_bytes(name)?;
            return Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        }
        let dev = candle_core::Device::Cpu;
        let q = self.content.tensor(&mut self.reader, name, &dev)?;
        Ok(q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?)
    }
}
