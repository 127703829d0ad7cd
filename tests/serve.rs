//! quantize + serve: GGUF conversion and the quantized decoder, the OpenAI-compatible server
//! (driven by the official Python client when available), and the web page.

#[path = "serve/fixture.rs"]
mod fixture;
#[path = "serve/quant.rs"]
mod quant;
