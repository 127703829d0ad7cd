//! quantize + serve: GGUF conversion and the quantized decoder, the two stages, the
//! OpenAI-compatible server (also driven by the official Python client when available), and the
//! web page in headless Chromium.

#[path = "../common/external.rs"]
mod external;
mod fixture;
mod http;
mod modelfile;
mod quant;
mod quant_families;
mod stages;
