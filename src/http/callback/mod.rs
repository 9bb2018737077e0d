//! The platforms' HTTP callbacks: WeCom's URL verification and kf events, and the Dialogue
//! Open Platform's message push.
//!
//! | route | does |
//! |---|---|
//! | `GET /callback/wecom/<account>?msg_signature&timestamp&nonce&echostr` | URL verification: answers the decrypted `echostr` as the bare body |
//! | `POST /callback/wecom/<account>?msg_signature&timestamp&nonce` | `<xml><ToUserName/><AgentID/><Encrypt/></xml>`: a `kf_msg_or_event` wakes the [`crate::engine::inbound`] loop of its open_kfid with the callback Token; answers `success` at once |
//! | `POST /callback/chatbot/<account>` | `{"encrypted": "<base64>"}`: decrypted, published to `wxdispatch.inbound` (`<account>.<msgtype>`), stored in `inbound_messages`; answers `success` |
//!
//! WeCom callbacks are authenticated by `msg_signature` (SHA-1 over the account's callback
//! token, timestamp, nonce and ciphertext, compared in constant time) and must be fresh
//! (within [`MAX_TIMESTAMP_SKEW_SECS`]); the ciphertext must decrypt with the account's
//! EncodingAESKey and name its corpid as the receive id. The chatbot push carries no
//! signature: only decryption with the bot's key and APPID authenticates it.
//!
//! Every rejection is a 4xx with a short reason and one `warn` log line (never a secret, never
//! a panic) and stores nothing: unknown account or one without callback credentials 404,
//! missing/malformed parameters or body 400, bad signature or stale timestamp 403, body over
//! `http.max_body_bytes` 413. A chatbot push that cannot be published or stored right now is
//! answered 503 so that the platform retries it.
//!
//! The files: [`router`] (the routes), [`auth`] (what every callback checks, and how it
//! refuses), [`wecom`] (URL verification, kf events), [`chatbot`] (the push).

pub mod auth;
pub mod chatbot;
pub mod router;
pub mod wecom;

pub use auth::{MAX_TIMESTAMP_SKEW_SECS, Reject, WecomQuery};
pub use chatbot::chatbot_inbound;
pub use router::routes;
