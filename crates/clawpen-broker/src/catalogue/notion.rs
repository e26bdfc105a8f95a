//! Notion: the pages shared with the integration, searched and read; a comment on a page, by
//! proposal (a suggestion to the page's people: the page itself is never edited). Notion grants
//! no OAuth scopes: an integration's capabilities ("Read content", "Insert comments") are set
//! where it is registered, and the user picks which pages it sees when connecting. The broker
//! records the capabilities a tool needs as its scopes, so a tool enabled after connecting asks
//! for a reconnect like any other provider's.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{args, object, text, Draft, Exec, Kind, Provider, ToolDef, ONE_LINE, TEXT};
use crate::ToolError;

const READ_CONTENT: &str = "read_content";
const INSERT_COMMENTS: &str = "insert_comments";

/// A Notion id: a UUID, with or without its dashes.
const ID: &str = "^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$";
const CAP: usize = 16 * 1024;

fn page_schema() -> Value {
    json!({"type": "string", "pattern": ID, "description": "the page's id, a UUID (from notion_search)"})
}

pub const TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "notion_search",
        provider: Provider::Notion,
        source: "Notion",
        description: "Search the Notion pages and databases shared with clawpen by title; without a query, the most recently edited.",
        scopes: &[READ_CONTENT],
        kind: Kind::Read,
        method: "POST (a search: reads only)",
        path: "/v1/search",
        result_cap: CAP,
        fields: &["id", "object", "title", "url", "last_edited_time"],
        schema: || object(json!({"query": {"type": "string", "maxLength": 200, "pattern": ONE_LINE, "description": "words of the title"}, "kind": {"type": "string", "enum": ["page", "database"], "description": "only pages or only databases"}}), &[]),
    },
    ToolDef {
        name: "notion_read_page",
        provider: Provider::Notion,
        source: "Notion",
        description: "Read a Notion page: its title and its text, block by block.",
        scopes: &[READ_CONTENT],
        kind: Kind::Read,
        method: "GET",
        path: "/v1/pages/{page_id} and /v1/blocks/{page_id}/children?page_size=100",
        result_cap: CAP,
        fields: &["id", "title", "url", "last_edited_time", "text"],
        schema: || object(json!({"page_id": page_schema()}), &["page_id"]),
    },
    ToolDef {
        name: "notion_comment",
        provider: Provider::Notion,
        source: "Notion",
        description: "Propose a comment on a Notion page, as a suggestion to its people (the page itself is not edited). Nothing is posted now: the user approves the proposal in clawpen, then the comment is added.",
        scopes: &[READ_CONTENT, INSERT_COMMENTS],
        kind: Kind::Propose,
        method: "POST (on approval)",
        path: "/v1/comments",
        result_cap: 4096,
        fields: &["proposal", "state", "target", "text"],
        schema: || object(json!({"page_id": page_schema(), "text": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": TEXT, "description": "the comment, plain text"}}), &["page_id", "text"]),
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    query: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadPage {
    page_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Comment {
    page_id: String,
    text: String,
}

/// A page id in Notion's dashed form, checked again where it becomes a path segment or a
/// request's parent.
pub(crate) fn page_id(s: &str) -> Result<String, ToolError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let dashes_ok = s.len() == 32 || (s.len() == 36 && [8, 13, 18, 23].iter().all(|i| s.as_bytes()[*i] == b'-'));
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !dashes_ok {
        return Err(ToolError::new("invalid_arguments", "argument `page_id` is not a Notion id (a UUID)".to_owned()));
    }
    let h = hex.to_ascii_lowercase();
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// The plain text of a rich-text array.
fn plain(rich: &Value) -> String {
    rich.as_array().map(|a| a.iter().filter_map(|t| t["plain_text"].as_str()).collect::<String>()).unwrap_or_default()
}

/// A page's title (the one property of type `title`, whatever a database named it) or a
/// database's.
fn title(o: &Value) -> String {
    if o["object"] == "database" {
        return plain(&o["title"]);
    }
    o["properties"].as_object().and_then(|p| p.values().find(|v| v["type"] == "title")).map(|t| plain(&t["title"])).unwrap_or_default()
}

fn summary(o: &Value) -> Value {
    json!({
        "id": text(&o["id"], 36),
        "object": text(&o["object"], 20),
        "title": super::cut(&title(o), 300),
        "url": text(&o["url"], 300),
        "last_edited_time": text(&o["last_edited_time"], 40),
    })
}

/// One block as a line of text, marked by its type where that helps reading.
fn block_line(b: &Value) -> Option<String> {
    let kind = b["type"].as_str()?;
    let t = plain(&b[kind]["rich_text"]);
    let line = match kind {
        "heading_1" => format!("# {t}"),
        "heading_2" => format!("## {t}"),
        "heading_3" => format!("### {t}"),
        "bulleted_list_item" => format!("- {t}"),
        "numbered_list_item" => format!("1. {t}"),
        "to_do" => format!("[{}] {t}", if b[kind]["checked"] == true { "x" } else { " " }),
        "quote" => format!("> {t}"),
        "child_page" => format!("(page: {})", b[kind]["title"].as_str().unwrap_or_default()),
        _ if b[kind].get("rich_text").is_some() => t,
        _ => return None,
    };
    Some(line)
}

pub(crate) async fn read(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Value, ToolError> {
    match tool {
        "notion_search" => {
            let a: Search = args(a)?;
            let mut body = json!({"page_size": 20, "sort": {"direction": "descending", "timestamp": "last_edited_time"}});
            if let Some(q) = a.query.as_deref().filter(|q| !q.is_empty()) {
                body["query"] = json!(q);
            }
            match a.kind.as_deref() {
                None => {}
                Some(k @ ("page" | "database")) => body["filter"] = json!({"property": "object", "value": k}),
                Some(_) => return Err(ToolError::new("invalid_arguments", "argument `kind` must be page or database".to_owned())),
            }
            let v = x.json(&x.post("/v1/search", body)).await?;
            let results: Vec<Value> = v["results"].as_array().map(|a| a.iter().take(20).map(summary).collect()).unwrap_or_default();
            Ok(json!({"results": results}))
        }
        "notion_read_page" => {
            let a: ReadPage = args(a)?;
            let id = page_id(&a.page_id)?;
            let seg = crate::http::segment(&id);
            let page = x.json(&x.get(&format!("/v1/pages/{seg}"), &[])).await?;
            let blocks = x.json(&x.get(&format!("/v1/blocks/{seg}/children"), &[("page_size", "100".to_owned())])).await?;
            let lines: Vec<String> = blocks["results"].as_array().map(|a| a.iter().filter_map(block_line).collect()).unwrap_or_default();
            let mut out = summary(&page);
            out.as_object_mut().map(|m| m.remove("object"));
            out["text"] = super::cut(&lines.join("\n"), 12_000);
            Ok(out)
        }
        _ => Err(ToolError::internal("not a Notion read tool")),
    }
}

pub(crate) async fn propose(x: &Exec<'_>, tool: &str, a: &Value) -> Result<Draft, ToolError> {
    if tool != "notion_comment" {
        return Err(ToolError::internal("not a Notion write tool"));
    }
    let c: Comment = args(a)?;
    let id = page_id(&c.page_id)?;
    // The page as it is now, so the person approving sees which page this is.
    let page = x.json(&x.get(&format!("/v1/pages/{}", crate::http::segment(&id)), &[])).await?;
    let name = super::cut_str(&title(&page).replace(|ch: char| ch.is_control(), " "), 120);
    Ok(Draft { target: format!("Notion page \"{name}\" ({id}), as a comment"), text: c.text.clone(), payload: a.clone() })
}

pub(crate) async fn perform(x: &Exec<'_>, tool: &str, payload: &Value) -> Result<String, ToolError> {
    if tool != "notion_comment" {
        return Err(ToolError::internal("not a Notion write tool"));
    }
    let c: Comment = args(payload)?;
    let id = page_id(&c.page_id)?;
    let body = json!({"parent": {"page_id": id}, "rich_text": [{"type": "text", "text": {"content": c.text}}]});
    let v = x.json(&x.post("/v1/comments", body)).await?;
    let comment = v["id"].as_str().and_then(|i| page_id(i).ok()).unwrap_or_else(|| "?".into());
    Ok(format!("Notion comment {comment} added on page {id}"))
}

/// The account as `Name (workspace)`: the integration's bot user names its owner and workspace.
pub(crate) async fn account(b: &crate::Broker, p: &crate::config::ResolvedProvider, token: &clawpen_vault::Secret<String>) -> Option<String> {
    let v = b.get_with_token(p, token, "/v1/users/me", &[]).await?;
    let bot = &v["bot"];
    match (bot["owner"]["user"]["name"].as_str(), bot["workspace_name"].as_str()) {
        (Some(u), Some(w)) => Some(format!("{u} ({w})")),
        (None, Some(w)) => Some(w.to_owned()),
        (Some(u), None) => Some(u.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_dashed() {
        assert_eq!(page_id("59833787-2cf9-4fdf-8782-e53db20768a5").unwrap(), "59833787-2cf9-4fdf-8782-e53db20768a5");
        assert_eq!(page_id("598337872CF94FDF8782E53DB20768A5").unwrap(), "59833787-2cf9-4fdf-8782-e53db20768a5");
        for bad in ["59833787-2cf9-4fdf-8782-e53db20768a", "5983-37872cf94fdf8782e53db20768a5", "../pages/59833787", "https://www.notion.so/Page-598337872cf94fdf8782e53db20768a5", "59833787-2cf9-4fdf-8782-e53db20768a5/children"] {
            assert!(page_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn titles_and_blocks_are_read_as_text() {
        let page = json!({"object": "page", "properties": {"Name": {"id": "title", "type": "title", "title": [{"plain_text": "Trip "}, {"plain_text": "to Lisbon"}]}, "Tags": {"type": "multi_select"}}});
        assert_eq!(title(&page), "Trip to Lisbon");
        let b = |t: &str, s: &str| json!({"type": t, t: {"rich_text": [{"plain_text": s}]}});
        assert_eq!(block_line(&b("heading_2", "Flights")).unwrap(), "## Flights");
        assert_eq!(block_line(&b("bulleted_list_item", "passport")).unwrap(), "- passport");
        assert_eq!(block_line(&b("paragraph", "hello")).unwrap(), "hello");
        assert!(block_line(&json!({"type": "image", "image": {}})).is_none());
    }
}
