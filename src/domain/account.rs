//! What the job contract needs to know of an account. The settings ([`crate::config`]) sit
//! above the domain, so the domain names the few facts it reads and the account type of the
//! settings provides them.

use crate::domain::channel::Channel;

/// The facts of an account that job parsing and rendering depend on.
pub trait AccountView {
    /// The account's name (routing key and queue suffix).
    fn name(&self) -> &str;
    /// The platform the account talks to.
    fn channel(&self) -> Channel;
    /// WeCom: the open_kfids the account may send from (the first is the default).
    fn open_kfids(&self) -> &[String];
    /// Chatbot: the platform APPID.
    fn appid(&self) -> Option<&str>;
    /// Chatbot: the `channel` rendered when a job names none.
    fn default_channel(&self) -> i64;
    /// Chatbot: the account's default Official Account / Mini Program appid (`oa_appid`),
    /// rendered in `<appid>` when a job names no `chatbot.appid`.
    fn oa_appid(&self) -> Option<&str> {
        None
    }
}
