//! `offload admin ...` over the API with an admin token: the audit log, users, tokens and
//! every container.

use offload_agent::client::Api;
use offload_core::api::{AuditView, ContainerView, RevokeRequest, RevokeResponse, UserView};

use crate::cli::{Output, UserCommand};
use crate::events::{parse_since, timestamp};
use crate::shell::urlencode;

pub async fn audit(
    api: &Api,
    user: Option<String>,
    since: Option<String>,
    limit: usize,
    output: Output,
) -> anyhow::Result<i32> {
    let mut path = format!("/v1/admin/audit?limit={limit}");
    if let Some(user) = user {
        path.push_str(&format!("&user={}", urlencode(&user)));
    }
    if let Some(since) = since {
        let at = parse_since(&since, std::time::SystemTime::now())?;
        path.push_str(&format!("&since_ms={at}"));
    }
    let entries: Vec<AuditView> = api.get(&path).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Output::Table => {
            println!(
                "{:<20}  {:<12}  {:<14}  {:<14}  {:<7}  DETAIL",
                "TIME", "USER", "ACTION", "TARGET", "OUTCOME"
            );
            for e in entries {
                println!(
                    "{:<20}  {:<12}  {:<14}  {:<14}  {:<7}  {}",
                    timestamp(e.at_ms),
                    e.user.as_deref().unwrap_or("-"),
                    e.action,
                    e.target.as_deref().unwrap_or("-"),
                    e.outcome,
                    e.detail
                );
            }
        }
    }
    Ok(0)
}

pub async fn users(api: &Api, output: Output) -> anyhow::Result<i32> {
    let users: Vec<UserView> = api.get("/v1/admin/users").await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&users)?),
        Output::Table => {
            println!(
                "{:<16}  {:<5}  {:<8}  {:>10}  {:>4}  {:>6}  {:<20}  {:<20}",
                "USER", "ADMIN", "STATE", "CONTAINERS", "EDGE", "TOKENS", "AGENT", "LAST SEEN"
            );
            for u in users {
                println!(
                    "{:<16}  {:<5}  {:<8}  {:>10}  {:>4}  {:>6}  {:<20}  {:<20}",
                    u.name,
                    if u.admin { "yes" } else { "no" },
                    if u.disabled_at.is_some() {
                        "disabled"
                    } else {
                        "active"
                    },
                    u.containers,
                    u.at_edge,
                    u.tokens,
                    u.agent.as_deref().unwrap_or("-"),
                    u.last_seen_at
                        .map(|s| timestamp(s.saturating_mul(1000)))
                        .unwrap_or_else(|| "never".to_owned())
                );
            }
        }
    }
    Ok(0)
}

pub async fn user(api: &Api, command: UserCommand) -> anyhow::Result<i32> {
    let (name, verb) = match &command {
        UserCommand::Disable { name } => (name, "disable"),
        UserCommand::Enable { name } => (name, "enable"),
    };
    let user: UserView = api
        .post(
            &format!("/v1/admin/users/{}/{verb}", urlencode(name)),
            &serde_json::json!({}),
        )
        .await?;
    match user.disabled_at {
        Some(_) => println!(
            "{} disabled: their tokens no longer work; their {} container(s) keep running",
            user.name, user.containers
        ),
        None => println!("{} enabled", user.name),
    }
    Ok(0)
}

pub async fn revoke(api: &Api, user: Option<String>, token: Option<String>) -> anyhow::Result<i32> {
    let request = RevokeRequest {
        user: user.clone(),
        token,
    };
    let done: RevokeResponse = api.post("/v1/admin/tokens/revoke", &request).await?;
    match user {
        Some(user) => println!(
            "revoked {} token(s) of {user}; they must join again with a new join token",
            done.revoked
        ),
        None => println!("revoked the token"),
    }
    Ok(0)
}

pub async fn ls(api: &Api, output: Output) -> anyhow::Result<i32> {
    let views: Vec<ContainerView> = api.get("/v1/admin/containers").await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Output::Table => crate::commands::print_table(&views, true),
    }
    Ok(0)
}
