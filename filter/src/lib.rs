//! Cell router proxy-wasm filter (skeleton; see issue 3).
