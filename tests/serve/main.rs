//! quantize + serve: GGUF conversion and the quantized decoder, the two stages, the
//! OpenAI-compatible server (also driven by the official Python client when available), and the
//! web page in headless Chromium.

#[path = "common/external.rs"]
mod external;
#[path = "serve/fixture.rs"]
mod fixture;
#[path = "serve/http.rs"]
mod http;
#[path = "serve/quant.rs"]
mod quant;
#[path = "serve/stages.rs"]
mod stages;
