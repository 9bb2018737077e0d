//! Fixtures shared by the demo, the benchmark and the tests: keys, accounts and one sample
//! message of every type. The one home of these values: change them here, not in a copy.

use serde_json::{Value, json};

use crate::config::{AccountConfig, Channel, Rate, Secret};

/// A demo EncodingAESKey (43 chars, with the non-zero trailing bits real keys have).
pub const DEMO_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
/// A second valid EncodingAESKey, for an account that must not share the first one's key (the
/// tests' WeCom callbacks).
pub const SECOND_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The APPID of every fixture chatbot account (the WXBizMsgCrypt receive id).
pub const CHATBOT_APPID: &str = "P5Zb1RfMtW7rS3k";
/// The Official Account appid of every fixture chatbot account (`oa_appid`: sendmsg's
/// `<appid>` on channels 0, 5 and 6).
pub const CHATBOT_OA_APPID: &str = "wx5f2c3e9a1b7d4c60";

/// No rate limit (tests and throughput runs measure the rest of the path).
pub fn unlimited() -> Rate {
    Rate {
        per_second: None,
        per_minute: None,
        burst: None,
        unlimited: true,
    }
}

/// `per_second` requests a second with `burst` back to back.
pub fn per_second(per_second: u32, burst: u32) -> Rate {
    Rate {
        per_second: Some(per_second),
        per_minute: None,
        burst: Some(burst),
        unlimited: false,
    }
}

/// A chatbot (Dialogue Open Platform) account at `base_url` with its own `token`: APPID
/// [`CHATBOT_APPID`], EncodingAESKey [`DEMO_AES_KEY`], no rate limit.
pub fn chatbot_account(name: &str, base_url: &str, token: &str) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        channel: Channel::Chatbot,
        base_url: Some(base_url.into()),
        rate: unlimited(),
        appid: Some(CHATBOT_APPID.into()),
        default_channel: 0,
        oa_appid: Some(CHATBOT_OA_APPID.into()),
        corpid: None,
        secret: Secret::default(),
        secret_file: None,
        open_kfids: Vec::new(),
        token: Secret::new(token),
        token_file: None,
        encoding_aes_key: Secret::new(DEMO_AES_KEY),
        encoding_aes_key_file: None,
        require_push_signature: false,
        gate_needperson: false,
        outcomes: true,
    }
}

/// A WeCom customer-service account at `base_url` with one `open_kfid`: no rate limit, no
/// callback token or key (set `token` and `encoding_aes_key` for callbacks).
pub fn wecom_account(
    name: &str,
    base_url: &str,
    corpid: &str,
    secret: &str,
    open_kfid: &str,
) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        channel: Channel::Wecom,
        base_url: Some(base_url.into()),
        rate: unlimited(),
        appid: None,
        default_channel: 0,
        oa_appid: None,
        corpid: Some(corpid.into()),
        secret: Secret::new(secret),
        secret_file: None,
        open_kfids: vec![open_kfid.into()],
        token: Secret::default(),
        token_file: None,
        encoding_aes_key: Secret::default(),
        encoding_aes_key_file: None,
        require_push_signature: false,
        gate_needperson: false,
        outcomes: true,
    }
}

/// The demo's accounts, pointed at `base_url`: `demo-bot` (chatbot) and `demo-kf` (WeCom),
/// both limited to 200/s with a burst of 20.
pub fn demo_accounts(base_url: &str) -> Vec<AccountConfig> {
    let mut bot = chatbot_account("demo-bot", base_url, "demoTOKENchatbot000000000000001");
    bot.rate = per_second(200, 20);
    let mut kf = wecom_account(
        "demo-kf",
        base_url,
        "wwdemo0000000001",
        "demo-corp-secret",
        "wkDEMO000000000001",
    );
    kf.rate = per_second(200, 20);
    vec![bot, kf]
}

/// The account of a benchmark run on `channel` (`bench-bot` / `bench-kf`), no rate limit.
pub fn bench_account(channel: Channel, base_url: &str) -> AccountConfig {
    match channel {
        Channel::Chatbot => {
            chatbot_account("bench-bot", base_url, "benchTOKENchatbot00000000000001")
        }
        Channel::Wecom => wecom_account(
            "bench-kf",
            base_url,
            "wwbench000000001",
            "bench-corp-secret",
            "wkBENCH00000000001",
        ),
    }
}

// A data table: one entry per message type.
/// One message of every type, per channel: `(account, message type, message object)`.
pub fn sample_messages() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "demo-bot",
            "text",
            json!({"text": "Hello! Reply <a href=\"weixin://bizmsgmenu?msgmenucontent=yes&msgmenuid=1\">yes</a> to continue."}),
        ),
        (
            "demo-bot",
            "news",
            json!({"news": {"articles": [{"title": "Order shipped", "description": "Track your parcel", "url": "https://example.com/t/1", "picurl": "https://example.com/p.png"}]}}),
        ),
        (
            "demo-bot",
            "image",
            json!({"image": {"media_id": "MEDIA_ID_1", "url": "https://example.com/i.png"}}),
        ),
        (
            "demo-bot",
            "miniprogrampage",
            json!({"miniprogrampage": {"title": "Your order", "appid": "wx1234567890abcdef", "pagepath": "pages/order?id=1", "thumb_media_id": "THUMB_1"}}),
        ),
        (
            "demo-bot",
            "multimsg",
            json!({"multimsg": [{"text": "Two things:"}, {"image": {"media_id": "MEDIA_ID_2"}}]}),
        ),
        (
            "demo-kf",
            "text",
            json!({"text": {"content": "Hello from WeCom customer service"}}),
        ),
        (
            "demo-kf",
            "image",
            json!({"image": {"media_id": "MEDIA_IMG"}}),
        ),
        (
            "demo-kf",
            "voice",
            json!({"voice": {"media_id": "MEDIA_VOICE"}}),
        ),
        (
            "demo-kf",
            "video",
            json!({"video": {"media_id": "MEDIA_VIDEO"}}),
        ),
        (
            "demo-kf",
            "file",
            json!({"file": {"media_id": "MEDIA_FILE"}}),
        ),
        (
            "demo-kf",
            "link",
            json!({"link": {"title": "Manual", "desc": "How to set it up", "url": "https://example.com/manual", "thumb_media_id": "THUMB_2"}}),
        ),
        (
            "demo-kf",
            "miniprogram",
            json!({"miniprogram": {"appid": "wx1234567890abcdef", "title": "Track order", "thumb_media_id": "THUMB_3", "pagepath": "pages/track"}}),
        ),
        (
            "demo-kf",
            "msgmenu",
            json!({"msgmenu": {"head_content": "Was this helpful?", "list": [{"type": "click", "click": {"id": "101", "content": "Yes"}}, {"type": "click", "click": {"id": "102", "content": "No"}}], "tail_content": "Thanks!"}}),
        ),
        (
            "demo-kf",
            "location",
            json!({"location": {"name": "Store", "address": "1 Main St", "latitude": 31.2304, "longitude": 121.4737}}),
        ),
        (
            "demo-kf",
            "business_card",
            json!({"business_card": {"userid": "zhangsan"}}),
        ),
        (
            "demo-kf",
            "ca_link",
            json!({"ca_link": {"link_url": "https://work.weixin.qq.com/ca/cawcde1"}}),
        ),
    ]
}
