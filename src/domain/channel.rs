//! Which platform an account talks to.

use serde::{Deserialize, Serialize};

/// The platform of an account: the WeChat Dialogue Open Platform (`chatbot`) or WeCom customer
/// service (`wecom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Chatbot,
    Wecom,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Chatbot => "chatbot",
            Channel::Wecom => "wecom",
        }
    }
}
