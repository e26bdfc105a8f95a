//! Trello: the user's boards and their cards, read; a card's name, description, due date or
//! list changed, by proposal. Trello's OAuth 2.0 scopes are per object type
//! (`read:board:trello`, `read:card:trello`, `write:card:trello`); the broker never archives,
//! deletes or creates a card, and [`crate::http::ApiRequest::check`] refuses a `closed` field
//! whatever built the request.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{args, cut, object, text, Draft, Exec, Kind, Provider, ToolDef, ONE_LINE, TEXT};
use crate::ToolError;

const READ_BOARD: &str = "read:board:trello";
const READ_CARD: &str = "read:card:trello";
const WRITE_CARD: &str = "write:card:trello";

/// Trello's object ids: 24 hex digits.
const ID: &str = "^[0-9a-fA-F]{24}$";
/// A date, or a date and time with a zone (what Trello takes as `due`); empty clears it.
const DUE: &str = "^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,3})?)?(Z|[+-][0-9]{2}:[0-9]{2}))?$";
const CAP: usize = 16 * 1024;

fn id_schema(what: &str) -> Value {
    json!({"type": "string", "pattern": ID, "description": format!("the {what}'s id, 24 hex digits (from trello_list_boards or trello_list_cards)")})
}

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "trello_list_boards",
        provider: Provider::Trello,
        source: "Trello",
        description: "List the user's open Trello boards (ids and names).",
        scopes: &[READ_BOARD],
        kind: Kind::Read,
        method: "GET",
        path: "/members/me/boards?filter=open&fields=name,desc,dateLastActivity",
        result_cap: CAP,
        fields: &["id", "name", "desc", "last_activity"],
        schema: || object(json!({}), &[]),
    },
    ToolDef {
        name: "trello_list_cards",
        provider: Provider::Trello,
        source: "Trello",
        description: "List the open cards of a Trello board with their list, description, due date and labels; optionally only one list's.",
        scopes: &[READ_BOARD, READ_CARD],
        kind: Kind::Read,
        method: "GET",
        path: "/boards/{board_id}/lists?filter=open and /boards/{board_id}/cards?filter=open",
        result_cap: CAP,
        fields: &["id", "name", "list", "list_id", "desc", "due", "due_complete", "labels", "last_activity"],
        schema: || object(json!({"board_id": id_schema("board"), "list_id": id_schema("list")}), &["board_id"]),
    },
    ToolDef {
        name: "trello_update_card",
        provider: Provider::Trello,
        source: "Trello",
        description: "Propose a change to a Trello card: its name, description, due date (empty to clear), whether the due date is done, or the list it is in. Nothing changes now: the user approves the proposal in clawpen, then the card is updated as them. Cards are never archived or deleted.",
        scopes: &[READ_CARD, WRITE_CARD],
        kind: Kind::Propose,
        method: "PUT (on approval)",
        path: "/cards/{card_id}",
        result_cap: 4096,
        fields: &["proposal", "state", "target", "text"],
        schema: || {
            object(
                json!({
                    "card_id": id_schema("card"),
                    "name": {"type": "string", "minLength": 1, "maxLength": 512, "pattern": ONE_LINE, "description": "the card's new title"},
                    "desc": {"type": "string", "maxLength": 8000, "pattern": TEXT, "description": "the card's new description (Markdown)"},
                    "due": {"type": "string", "pattern": DUE, "description": "the new due date, e.g. \"2025-06-04\" or \"2025-06-04T17:00:00Z\"; empty to clear it"},
                    "due_complete": {"type": "boolean", "description": "whether the due date is done"},
                    "list_id": id_schema("list to move it to (of the same board)"),
                }),
                &["card_id"],
            )
        },
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListCards {
    board_id: String,
    list_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateCard {
    card_id: String,
    name: Option<String>,
    desc: Option<String>,
    due: Option<String>,
    due_complete: Option<bool>,
    list_id: Option<String>,
}

/// A Trello id, checked again where it becomes a path segment.
pub(crate) fn is_trello_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn id(field: &str, s: &str) -> Result<String, ToolError> {
    if is_trello_id(s) { Ok(s.to_ascii_lowercase()) } else { Err(ToolError::new("invalid_arguments", format!("argument `{field}` is not a Trello id (24 hex digits)"))) }
}

fn card(c: &Value, lists: &[(String, String)]) -> Value {
    let list_id = c["idList"].as_str().unwrap_or_default();
    json!({
        "id": text(&c["id"], 24),
        "name": text(&c["name"], 300),
        "list": lists.iter().find(|(id, _)| id == list_id).map(|(_, n)| cut(n, 100)),
        "list_id": text(&c["idList"], 24),
        "desc": text(&c["desc"], 1500),
        "due": text(&c["due"], 40),
        "due_complete": c["dueComplete"].as_bool(),
        "labels": c["labels"].as_array().map(|l| l.iter().take(20).filter_map(|l| l["name"].as_str().filter(|n| !n.is_empty()).or(l["color"].as_str())).map(|n| cut(n, 50)).collect::<Vec<_>>()),
        "last_activity": text(&c["dateLastActivity"], 40),
    })
}

pub(crate) async fn read(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Value, ToolError> {
    match tool {
        "trello_list_boards" => {
            let _: NoArgs = args(a)?;
            let q = [("filter", "open".to_owned()), ("fields", "name,desc,dateLastActivity".to_owned())];
            let v = x.json(&x.get("/members/me/boards", &q)).await?;
            let boards: Vec<Value> = v.as_array().map(|a| a.iter().take(100).map(|b| json!({"id": text(&b["id"], 24), "name": text(&b["name"], 200), "desc": text(&b["desc"], 500), "last_activity": text(&b["dateLastActivity"], 40)})).collect()).unwrap_or_default();
            Ok(json!({"boards": boards}))
        }
        "trello_list_cards" => {
            let a: ListCards = args(a)?;
            let board = crate::http::segment(&id("board_id", &a.board_id)?);
            let only = a.list_id.as_deref().map(|l| id("list_id", l)).transpose()?;
            let fields = "name,desc,idList,due,dueComplete,labels,dateLastActivity".to_owned();
            let lists = x.json(&x.get(&format!("/boards/{board}/lists"), &[("filter", "open".to_owned()), ("fields", "name".to_owned())])).await?;
            let lists: Vec<(String, String)> = lists.as_array().map(|a| a.iter().filter_map(|l| Some((l["id"].as_str()?.to_owned(), l["name"].as_str().unwrap_or_default().to_owned()))).collect()).unwrap_or_default();
            let v = x.json(&x.get(&format!("/boards/{board}/cards"), &[("filter", "open".to_owned()), ("fields", fields)])).await?;
            let cards: Vec<Value> = v
                .as_array()
                .map(|a| a.iter().filter(|c| only.as_deref().is_none_or(|l| c["idList"].as_str() == Some(l))).take(200).map(|c| card(c, &lists)).collect())
                .unwrap_or_default();
            Ok(json!({"board_id": a.board_id, "lists": lists.iter().map(|(id, n)| json!({"id": id, "name": cut(n, 100)})).collect::<Vec<_>>(), "cards": cards}))
        }
        _ => Err(ToolError::internal("not a Trello read tool")),
    }
}

/// The fields of a card update as Trello names them, in a fixed order.
fn changes(a: &UpdateCard) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if let Some(n) = &a.name {
        out.push(("name", json!(n)));
    }
    if let Some(d) = &a.desc {
        out.push(("desc", json!(d)));
    }
    if let Some(d) = &a.due {
        out.push(("due", if d.is_empty() { Value::Null } else { json!(d) }));
    }
    if let Some(c) = a.due_complete {
        out.push(("dueComplete", json!(c)));
    }
    if let Some(l) = &a.list_id {
        out.push(("idList", json!(l.to_ascii_lowercase())));
    }
    out
}

pub(crate) async fn propose(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Draft, ToolError> {
    if tool != "trello_update_card" {
        return Err(ToolError::internal("not a Trello write tool"));
    }
    let u: UpdateCard = args(a)?;
    let card_id = id("card_id", &u.card_id)?;
    if let Some(l) = &u.list_id {
        id("list_id", l)?;
    }
    let changes = changes(&u);
    if changes.is_empty() {
        return Err(ToolError::new("invalid_arguments", "trello_update_card: give at least one of `name`, `desc`, `due`, `due_complete` or `list_id`".to_owned()));
    }
    // The card as it is now, so the person approving sees which card this is.
    let now = x.json(&x.get(&format!("/cards/{}", crate::http::segment(&card_id)), &[("fields", "name,idBoard,idList".to_owned())])).await?;
    if let Some(l) = &u.list_id {
        // A list of another board would move the card off the board it was proposed on.
        let board = now["idBoard"].as_str().filter(|b| is_trello_id(b)).ok_or_else(|| ToolError::new("provider_error", "Trello did not say which board the card is on.".to_owned()))?;
        let lists = x.json(&x.get(&format!("/boards/{}/lists", crate::http::segment(board)), &[("filter", "open".to_owned()), ("fields", "name".to_owned())])).await?;
        if !lists.as_array().is_some_and(|a| a.iter().any(|x| x["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(l)))) {
            return Err(ToolError::new("invalid_arguments", "argument `list_id` is not an open list of the card's board".to_owned()));
        }
    }
    let name = now["name"].as_str().map(|n| super::cut_str(&n.replace(|c: char| c.is_control(), " "), 120)).unwrap_or_else(|| "?".into());
    let shown: Vec<String> = changes.iter().map(|(k, v)| format!("{k}: {}", if v.is_null() { "(cleared)".to_owned() } else { v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()) })).collect();
    Ok(Draft { target: format!("Trello card \"{name}\" ({card_id})"), text: shown.join("\n"), payload: a.clone() })
}

pub(crate) async fn perform(x: &Exec<'_>, tool: &str, payload: &Value) -> Result<String, ToolError> {
    if tool != "trello_update_card" {
        return Err(ToolError::internal("not a Trello write tool"));
    }
    let u: UpdateCard = args(payload)?;
    let card_id = id("card_id", &u.card_id)?;
    let body: serde_json::Map<String, Value> = changes(&u).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    if body.is_empty() {
        return Err(ToolError::internal("the proposal changes nothing"));
    }
    x.json(&x.put(&format!("/cards/{}", crate::http::segment(&card_id)), Value::Object(body))).await?;
    Ok(format!("Trello card {card_id} updated"))
}

/// The account as `Full Name (@username)`.
pub(crate) async fn account(b: &crate::Broker, p: &crate::config::ResolvedProvider, token: &clawpen_vault::Secret<String>) -> Option<String> {
    let v = b.get_with_token(p, token, "/members/me", &[("fields", "username,fullName".to_owned())]).await?;
    match (v["fullName"].as_str().filter(|n| !n.is_empty()), v["username"].as_str()) {
        (Some(n), Some(u)) => Some(format!("{n} (@{u})")),
        (None, Some(u)) => Some(format!("@{u}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_again_and_updates_name_their_fields() {
        assert!(id("card_id", "5F0000000000000000000001").is_ok());
        for bad in ["5f00000000000000000001", "5f000000000000000000000g", "../5f0000000000000000001", "https://trello.com/c/abc"] {
            assert!(id("card_id", bad).is_err(), "{bad}");
        }
        let u: UpdateCard = args(&json!({"card_id": "5f0000000000000000000001", "due": "", "due_complete": true, "list_id": "5F0000000000000000000002"})).unwrap();
        let c = changes(&u);
        assert_eq!(c, vec![("due", Value::Null), ("dueComplete", json!(true)), ("idList", json!("5f0000000000000000000002"))]);
        assert!(args::<UpdateCard>(&json!({"card_id": "5f0000000000000000000001", "closed": true})).is_err(), "closed is no argument");
    }
}
