//! The clap arguments of `wxdispatch kf …`, and the checks that need no call.

use crate::config::AccountConfig;
use crate::platform::kf::{
    KfError, default_open_kfid, stats_range, validate_external_userid, validate_ids,
    validate_media_id, validate_name, validate_open_kfid, validate_scene, validate_target,
    validate_userid, wecom_today,
};

/// `wxdispatch kf …`
#[derive(Debug, clap::Args)]
pub struct KfArgs {
    #[command(subcommand)]
    pub command: KfCommand,
}

/// Flags every kf command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The wecom account (from the config) whose corp is managed.
    #[arg(long)]
    pub account: String,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KfCommand {
    /// Customer-service accounts (open_kfid): list, add, update, delete, link.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Servicers (接待人员) of a kf account: list, add, remove.
    #[command(subcommand)]
    Servicer(ServicerCmd),
    /// WeChat customers by external_userid.
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// A conversation's service state: get, transfer.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Daily statistics of the corp (per kf account) or of servicers.
    #[command(subcommand)]
    Stats(StatsCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountCmd {
    /// List the corp's kf accounts.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Add a kf account; prints its new open_kfid.
    Add {
        /// Display name, at most 16 characters.
        #[arg(long)]
        name: String,
        /// Avatar: a temporary media id (media/upload), at most 128 bytes.
        #[arg(long)]
        media_id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Change a kf account's name and/or avatar.
    Update {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// New display name, at most 16 characters.
        #[arg(long)]
        name: Option<String>,
        /// New avatar: a temporary media id, at most 128 bytes.
        #[arg(long)]
        media_id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a kf account.
    #[command(alias = "del")]
    Delete {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Delete without asking (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Print the account's contact URL (the link customers open).
    Link {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Scene value echoed in enter_session events: at most 32 of [0-9a-zA-Z_-].
        #[arg(long)]
        scene: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ServicerCmd {
    /// List a kf account's servicers.
    List {
        /// The kf account (open_kfid).
        open_kfid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Add members as servicers (any number: sent 100 per call); per-user results.
    Add {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Member userids.
        #[arg(required = true)]
        userids: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Remove servicers (sent 100 per call); per-user results.
    #[command(alias = "del")]
    Remove {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Member userids.
        #[arg(required = true)]
        userids: Vec<String>,
        /// Remove without asking (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CustomerCmd {
    /// Look customers up (sent 100 per call); unknown ids are listed separately.
    Get {
        /// Customers' external_userids.
        #[arg(required = true)]
        external_userids: Vec<String>,
        /// Also ask for the scene of each customer's last session entry.
        #[arg(long)]
        with_context: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SessionCmd {
    /// Show a conversation's service state (0 new, 1 bot, 2 queued, 3 human, 4 ended).
    Get {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// The customer (external_userid).
        external_userid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Move a conversation: 1 bot, 2 queue, 3 a servicer (--servicer), 4 end. The current
    /// state is read first; moves WeCom does not allow are refused without a call.
    Transfer {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// The customer (external_userid).
        external_userid: String,
        /// Target state: 1 bot, 2 queued, 3 human (with --servicer), 4 ended.
        #[arg(long, allow_negative_numbers = true)]
        state: i64,
        /// The servicer's userid (required for --state 3).
        #[arg(long)]
        servicer: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// The date flags of the stats commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsFlags {
    /// First day, YYYY-MM-DD (WeCom's days: UTC+8); at most 180 days back.
    #[arg(long)]
    pub from: String,
    /// Last day, YYYY-MM-DD; at the latest yesterday; at most 31 days after --from.
    #[arg(long)]
    pub to: String,
    /// The kf account (default: the account's only configured open_kfid).
    #[arg(long)]
    pub open_kfid: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum StatsCmd {
    /// Per-day totals of a kf account: sessions, customers, messages, bot replies, transfers.
    Corp {
        #[command(flatten)]
        range: StatsFlags,
        #[command(flatten)]
        common: Common,
    },
    /// Per-day servicer figures: human sessions, reply rate, first reply time, satisfaction.
    Servicer {
        #[command(flatten)]
        range: StatsFlags,
        /// One servicer's figures (default: the kf account's servicer totals).
        #[arg(long)]
        servicer: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

impl KfCommand {
    /// For a destructive command: what it will do, in words for a y/N prompt, and whether
    /// `--yes` was given; `None` for the others.
    pub fn destructive(&self) -> Option<(String, bool)> {
        match self {
            KfCommand::Account(AccountCmd::Delete { open_kfid, yes, .. }) => {
                Some((format!("delete kf account {open_kfid}"), *yes))
            }
            KfCommand::Servicer(ServicerCmd::Remove {
                open_kfid,
                userids,
                yes,
                ..
            }) => Some((
                format!(
                    "remove {} servicer(s) from kf account {open_kfid}",
                    userids.len()
                ),
                *yes,
            )),
            _ => None,
        }
    }

    /// The flags every command takes.
    pub(super) fn common(&self) -> &Common {
        match self {
            KfCommand::Account(c) => match c {
                AccountCmd::List { common }
                | AccountCmd::Add { common, .. }
                | AccountCmd::Update { common, .. }
                | AccountCmd::Delete { common, .. }
                | AccountCmd::Link { common, .. } => common,
            },
            KfCommand::Servicer(c) => match c {
                ServicerCmd::List { common, .. }
                | ServicerCmd::Add { common, .. }
                | ServicerCmd::Remove { common, .. } => common,
            },
            KfCommand::Customer(CustomerCmd::Get { common, .. }) => common,
            KfCommand::Session(c) => match c {
                SessionCmd::Get { common, .. } | SessionCmd::Transfer { common, .. } => common,
            },
            KfCommand::Stats(c) => match c {
                StatsCmd::Corp { common, .. } | StatsCmd::Servicer { common, .. } => common,
            },
        }
    }

    /// Every check that needs no call, so bad input never reaches the database or the
    /// platform. (The client methods check again: they are also a library API.) One flat match
    /// with an arm per command, longer than most functions: each arm names the checks of one
    /// command, side by side with the others.
    pub(super) fn validate(&self, account: &AccountConfig) -> Result<(), KfError> {
        match self {
            KfCommand::Account(c) => match c {
                AccountCmd::List { .. } => Ok(()),
                AccountCmd::Add { name, media_id, .. } => {
                    validate_name(name)?;
                    validate_media_id(media_id)
                }
                AccountCmd::Update {
                    open_kfid,
                    name,
                    media_id,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    if name.is_none() && media_id.is_none() {
                        return Err(KfError::Invalid(
                            "nothing to update: give --name and/or --media-id".into(),
                        ));
                    }
                    name.as_deref().map(validate_name).transpose()?;
                    media_id.as_deref().map(validate_media_id).transpose()?;
                    Ok(())
                }
                AccountCmd::Delete { open_kfid, .. } => validate_open_kfid(open_kfid),
                AccountCmd::Link {
                    open_kfid, scene, ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    scene.as_deref().map(validate_scene).transpose().map(drop)
                }
            },
            KfCommand::Servicer(c) => match c {
                ServicerCmd::List { open_kfid, .. } => validate_open_kfid(open_kfid),
                ServicerCmd::Add {
                    open_kfid, userids, ..
                }
                | ServicerCmd::Remove {
                    open_kfid, userids, ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_ids("userid", userids, validate_userid).map(drop)
                }
            },
            KfCommand::Customer(CustomerCmd::Get {
                external_userids, ..
            }) => validate_ids(
                "external_userid",
                external_userids,
                validate_external_userid,
            )
            .map(drop),
            KfCommand::Session(c) => match c {
                SessionCmd::Get {
                    open_kfid,
                    external_userid,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_external_userid(external_userid)
                }
                SessionCmd::Transfer {
                    open_kfid,
                    external_userid,
                    state,
                    servicer,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_external_userid(external_userid)?;
                    validate_target(*state, servicer.as_deref())
                }
            },
            KfCommand::Stats(c) => {
                let (range, servicer) = match c {
                    StatsCmd::Corp { range, .. } => (range, None),
                    StatsCmd::Servicer {
                        range, servicer, ..
                    } => (range, servicer.as_deref()),
                };
                stats_range(&range.from, &range.to, wecom_today())?;
                default_open_kfid(account, range.open_kfid.as_deref())?;
                servicer.map(validate_userid).transpose().map(drop)
            }
        }
    }
}
