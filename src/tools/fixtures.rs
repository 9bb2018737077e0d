//! Fixtures shared by the demo, the benchmark and the tests.

/// A demo EncodingAESKey (43 chars, with the non-zero trailing bits real keys have).
pub const DEMO_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
