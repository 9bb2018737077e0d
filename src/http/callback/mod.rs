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
//! EncodingAESKey and name its corpid as the receive id. A kf event whose signature was
//! already seen inside that window is a replay: acked `success` (WeCom's own retries must
//! be acked) but wakes nothing ([`replay`]); and the sync hub spaces the wakes of one
//! open_kfid ([`crate::engine::inbound::hub::MIN_WAKE_INTERVAL`]). The chatbot push carries
//! no signature: decryption with the bot's key and APPID authenticates it — unless the
//! request carries `msg_signature`/`signature`, `timestamp` and `nonce`, which are then
//! verified like WeCom's; an account with `require_push_signature = true` refuses unsigned
//! pushes.
//!
//! Every refusal stores nothing and is answered **the same way whatever the reason**: 400
//! with the body [`REFUSED_BODY`] and the same headers — unknown account, missing
//! credentials, bad query, bad signature, stale timestamp, malformed body, and above all any
//! decryption or parse failure (distinct answers made the chatbot push a CBC padding
//! oracle). The reason goes to one log line (`warn`; `debug` once its source is throttled),
//! never into the answer. Only two answers differ, and they say nothing about the keys: 413
//! for a body over `http.max_body_bytes`, 503 when a chatbot push cannot be published or
//! stored right now (the platform retries). A source that keeps being refused is slowed
//! down, then answered 429 ([`throttle`]); accepted callbacks are never slowed.
//!
//! The files: [`router`] (the routes), [`auth`] (what every callback checks, and the one
//! refusal), [`shield`] (the throttle and replay cache the routes share, and how a refusal
//! is logged and answered), [`throttle`], [`replay`], [`wecom`] (URL verification, kf
//! events), [`chatbot`] (the push).

pub mod auth;
pub mod chatbot;
pub mod replay;
pub mod router;
pub mod shield;
pub mod throttle;
pub mod wecom;

pub use auth::{MAX_TIMESTAMP_SKEW_SECS, REFUSED_BODY, Reject, WecomQuery};
pub use chatbot::chatbot_inbound;
pub use router::routes;
