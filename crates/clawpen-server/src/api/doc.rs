//! The OpenAPI document (`GET /api/openapi.json`).
//!
//! [`ApiDoc`] is built from the handlers' annotations, which name what each route itself
//! answers (201, 409 for a taken name, 502 from an agent, …). What the HTTP edge answers on
//! every route of a kind is added here, once, by [`EdgeResponses`]: 401/403 from the token
//! extractors, 400/415/422 from [`ApiJson`](super::extract::ApiJson), 400 from
//! [`ApiQuery`](super::extract::ApiQuery), 404 for an id that is not one, 413 from the body
//! limit and 500. [`IdParams`] gives every id in a path its pattern, and [`Links`] says which
//! response's id feeds which route, so that a client (or schemathesis' stateful phase) can follow
//! them. [`document`] is what is served: [`ApiDoc`] with this server's plan names;
//! `docs/openapi.json` is its snapshot on the default config, which review sees (see the test
//! below).

use clawpen_core::ids::{AgentId, KeyId, MemberId, TenantId};
use clawpen_core::names::{MAX_NAME_LEN, NAME_PATTERN};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{Object, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, Schema};
use utoipa::{Modify, OpenApi};

use super::{admin, agents, backups, files, integrations, nodes, provider_keys, schedules, telegram, transfer, usage};
use crate::config::Config;
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "clawpen", description = "Hosts personal AI agents, one hardened sandbox per tenant. \
        Every error is `{\"error\": {\"code\", \"message\"}}` with a 4xx or 5xx status."),
    paths(
        admin::create_tenant, admin::list_tenants, admin::get_tenant, admin::delete_tenant,
        admin::create_key, admin::list_keys, admin::revoke_key, admin::add_member, admin::list_members, admin::remove_member, admin::audit,
        admin::open_run, admin::close_run, admin::purge_own,
        agents::create_agent, agents::list_agents, agents::get_agent, agents::delete_agent,
        agents::start_agent, agents::stop_agent, agents::hibernate, agents::logs, agents::events, agents::send_message, agents::connect_url,
        files::get_file, files::put_file, files::memory, files::forget,
        provider_keys::save, provider_keys::list, provider_keys::remove,
        schedules::create, schedules::list_agent, schedules::list, schedules::get, schedules::change, schedules::delete, schedules::runs,
        backups::backup, backups::list, backups::list_all, backups::backup_any, backups::backup_store,
        transfer::export_own, transfer::export_tenant, transfer::import_own, transfer::import_tenant,
        usage::usage, usage::tenant_usage, usage::set_plan, usage::add_credits,
        telegram::put_bot, telegram::get_bot, telegram::delete_bot, telegram::create_pairing_code,
        telegram::list_members, telegram::remove_member, telegram::webhook,
        nodes::list, nodes::drain, nodes::undrain,
        integrations::list, integrations::enable, integrations::connect, integrations::callback, integrations::disconnect,
        integrations::proposals, integrations::approve, integrations::reject, integrations::tool_calls,
        super::healthz, super::readyz, super::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security, &IdParams, &EdgeResponses, &Links),
)]
pub struct ApiDoc;

/// The document this server serves: [`ApiDoc`] with the config's plans as the values a `plan`
/// may take (an unknown plan is still refused with a 422, for a client that did not read it).
pub fn document(config: &Config) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    // utoipa 5.5 writes a Link's fields in snake case; OpenAPI spells them in camel case.
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|p| p.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|i| i.values_mut()) {
            for response in op["responses"].as_object_mut().into_iter().flat_map(|r| r.values_mut()) {
                for link in response.get_mut("links").and_then(|l| l.as_object_mut()).into_iter().flat_map(|l| l.values_mut()) {
                    let Some(link) = link.as_object_mut() else { continue };
                    for (snake, camel) in [("operation_id", "operationId"), ("operation_ref", "operationRef"), ("request_body", "requestBody")] {
                        if let Some(v) = link.remove(snake) {
                            link.insert(camel.to_owned(), v);
                        }
                    }
                }
            }
        }
    }
    let plans: Vec<serde_json::Value> = config.plans.keys().map(|p| p.as_str().into()).collect();
    for (schema, nullable) in [("CreateTenant", true), ("SetPlan", false)] {
        if let Some(plan) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/plan")) {
            let mut values = plans.clone();
            if nullable {
                values.push(serde_json::Value::Null);
            }
            plan["enum"] = values.into();
        }
    }
    // The tools a tenant may enable: the broker's catalogue.
    if let Some(items) = doc.pointer_mut("/components/schemas/EnableTools/properties/tools/items") {
        items["enum"] = clawpen_broker::catalogue::definitions().map(|d| serde_json::Value::from(d.name)).collect::<Vec<_>>().into();
    }
    doc
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("admin", bearer());
        components.add_security_scheme("tenant_key", bearer());
    }
}

fn string_schema(pattern: &str, description: &str) -> Object {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).description(Some(description)).build()
}

/// A tenant or agent name (see [`clawpen_core::names::validate_name`]).
pub fn name_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_LEN))
        .pattern(Some(NAME_PATTERN))
        .description(Some("1–64 of `[A-Za-z0-9._-]`, starting with a letter or digit, never `..`."))
        .build()
}

/// An agent id in a body; a malformed one is a 422, another tenant's a 404.
pub fn agent_id_schema() -> Object {
    string_schema(AgentId::PATTERN, "An agent id (`ag_…`).")
}

/// A tenant id in a query; a malformed one is a 400.
pub fn tenant_id_query_schema() -> Object {
    string_schema(TenantId::PATTERN, "Only this tenant's lines: a tenant id (`tn_…`).")
}

/// Micro-credits to add or take away: never zero, at most [`usage::MAX_GRANT`] either way.
pub fn amount_schema() -> Schema {
    let range = |min: i64, max: i64| ObjectBuilder::new().schema_type(Type::Integer).format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64))).minimum(Some(min)).maximum(Some(max));
    OneOfBuilder::new()
        .item(range(-usage::MAX_GRANT, -1))
        .item(range(1, usage::MAX_GRANT))
        .description(Some("Micro-credits to add (negative to take away); 1 credit = 1,000,000. Never zero, at most 10^15 either way."))
        .build()
        .into()
}

/// What a path parameter of each name is: its pattern and what a caller is told when it is not
/// one. The server answers 404 for anything that does not match, like for a missing one.
fn path_param(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "tenant_id" => (TenantId::PATTERN, "A tenant id (`tn_…`)."),
        "agent_id" => (AgentId::PATTERN, "An agent id (`ag_…`) of the caller's tenant."),
        "key_id" => (KeyId::PATTERN, "An API key id (`key_…`) of the tenant."),
        "member_id" => (MemberId::PATTERN, "A member id (`mb_…`) of the tenant."),
        "bot" => (BOT_PATTERN, "`shared`, or the id (`tgb_…`) of a tenant's bot."),
        "name" => (NODE_PATTERN, "A node's name from the config (`local` without `[[nodes]]`)."),
        "run_id" => (RUN_PATTERN, "A run id (`run_…`) the server opened for the agent."),
        "model_provider" => (provider_keys::PROVIDER_PATTERN, "A model provider: `openai`, `anthropic`, `gemini`, `deepseek` or `xai`."),
        "provider" => (integrations::PROVIDER_PATTERN, "`google`, `github`, `slack`, `trello` or `notion`."),
        "connection_id" => (clawpen_core::ids::ConnectionId::PATTERN, "A connection id (`cn_…`) of the tenant."),
        "schedule_id" => (clawpen_core::ids::ScheduleId::PATTERN, "A schedule id (`sch_…`) of the caller's tenant."),
        "number" => (integrations::NUMBER_PATTERN, "A proposal's number within the tenant."),
        _ => return None,
    })
}

/// The webhook path's bot: the shared bot or a tenant's.
const BOT_PATTERN: &str = "^(shared|tgb_[a-z2-7]{26})$";
/// Run ids as the meter takes them.
pub const RUN_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Node names as the config allows them.
const NODE_PATTERN: &str = "^[a-z0-9-]{1,32}$";

struct IdParams;

impl Modify for IdParams {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (_, op) in operations(openapi) {
            for p in op.parameters.iter_mut().flatten() {
                if !matches!(p.parameter_in, ParameterIn::Path) {
                    continue;
                }
                let (pattern, description) = path_param(&p.name).unwrap_or_else(|| panic!("path parameter {} has no pattern in doc.rs", p.name));
                p.schema = Some(RefOr::T(Schema::Object(ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).build())));
                p.description.get_or_insert_with(|| description.to_owned());
            }
        }
    }
}

fn operations(openapi: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = (&str, &mut Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
            .into_iter()
            .filter_map(|op| op.as_mut())
            .map(move |op| (path.as_str(), op))
    })
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut r = Response::new(description);
    r.content.insert("application/json".to_owned(), Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    RefOr::T(r)
}

/// What the HTTP edge answers on every route of a kind, so that no route forgets a status it can
/// return. A status a handler declares keeps its body; an empty description gets the edge's.
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(openapi) {
            let tags = op.tags.clone().unwrap_or_default();
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let admin = tags.iter().any(|t| t == "admin");
            let ops_route = tags.iter().any(|t| t == "ops");
            let api_body = op.request_body.is_some() && path.starts_with("/api/v1/");
            let query = op.parameters.iter().flatten().any(|p| matches!(p.parameter_in, ParameterIn::Query));
            let ids = op.parameters.iter().flatten().any(|p| matches!(p.parameter_in, ParameterIn::Path));

            let mut edge: Vec<(&str, String)> = Vec::new();
            match (api_body, query) {
                (true, _) => edge.push(("400", "The body is not JSON (`invalid_json`).".into())),
                (false, true) => edge.push(("400", "A query parameter is malformed, unknown or out of range (`invalid_query`).".into())),
                _ => {}
            }
            if secured {
                edge.push(("401", "No token, or one the server does not know (`unauthorized`).".into()));
                let which = if admin { "A tenant API key on an admin route" } else { "The admin token on a tenant route" };
                edge.push(("403", format!("{which} (`forbidden`).")));
            }
            if ids {
                edge.push(("404", "No such resource, or not the caller's (`not_found`); an id that is not one is not found either.".into()));
            }
            edge.push(("413", format!("The request body is larger than {} bytes (`body_too_large`).", super::MAX_BODY_BYTES)));
            if api_body {
                edge.push(("415", "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).".into()));
                edge.push(("422", "The body is JSON but not of this shape, or a value is refused (`invalid_input`); the message names the field.".into()));
            }
            if !ops_route {
                edge.push(("500", "A failure of the server's own (`internal`); the operator's log has the details.".into()));
            }
            for (status, description) in edge {
                let entry = op.responses.responses.entry(status.to_owned()).or_insert_with(|| error_response(&description));
                if let RefOr::T(r) = entry {
                    if r.description.is_empty() {
                        r.description = description;
                    }
                }
            }
        }
    }
}

/// Which created thing's id feeds which routes: `(creating operation, status, path parameter
/// filled from the response, the expression, other parameters taken from the request)`.
const LINK_SOURCES: &[(&str, &str, &str, &str, &[&str])] = &[
    ("create_tenant", "201", "tenant_id", "$response.body#/id", &[]),
    ("create_agent", "201", "agent_id", "$response.body#/id", &[]),
    ("create_key", "201", "key_id", "$response.body#/key/id", &["tenant_id"]),
    ("add_tenant_member", "201", "member_id", "$response.body#/id", &["tenant_id"]),
    ("create_schedule", "201", "schedule_id", "$response.body#/id", &[]),
];

/// Adds an OpenAPI link from each creating operation's response to every operation with the
/// same security whose path parameters that response (and the creating request) fill.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // (operation id, security as JSON, path parameters) of every operation.
        let targets: Vec<(String, String, Vec<String>)> = operations(openapi)
            .map(|(_, op)| {
                let params = op.parameters.iter().flatten().filter(|p| matches!(p.parameter_in, ParameterIn::Path)).map(|p| p.name.clone()).collect();
                (op.operation_id.clone().unwrap_or_default(), security_of(op), params)
            })
            .collect();
        for (_, op) in operations(openapi) {
            let Some(&(_, status, param, expr, from_request)) = LINK_SOURCES.iter().find(|s| Some(s.0) == op.operation_id.as_deref()) else { continue };
            let security = security_of(op);
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) else { continue };
            for (target, target_security, params) in &targets {
                let fills = params.iter().any(|p| p == param) && params.iter().all(|p| p == param || from_request.contains(&p.as_str()));
                if !fills || *target_security != security {
                    continue;
                }
                let mut link = LinkBuilder::new().operation_id(target).parameter(param, expr);
                for p in from_request.iter() {
                    link = link.parameter(*p, format!("$request.path.{p}"));
                }
                response.links.insert(target.clone(), RefOr::T(link.build()));
            }
        }
    }
}

fn security_of(op: &Operation) -> String {
    serde_json::to_string(&op.security).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clawpen_core::ids::TelegramBotId;

    use super::*;

    const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    /// The whole document (as served on the default config) is checked in, so that an API change
    /// shows up in review.
    #[test]
    fn the_document_matches_its_snapshot() {
        let now = serde_json::to_string_pretty(&doc()).unwrap() + "\n";
        if std::env::var_os("UPDATE_OPENAPI_SNAPSHOT").is_some() {
            std::fs::write(SNAPSHOT, &now).unwrap();
            return;
        }
        let before = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
        if before != now {
            let first = before.lines().zip(now.lines()).position(|(a, b)| a != b).unwrap_or(before.lines().count().min(now.lines().count()));
            panic!(
                "the OpenAPI document differs from docs/openapi.json (first at line {}: {:?} became {:?}).\n\
                 If the change is meant, update the snapshot and commit it with the change:\n    \
                 UPDATE_OPENAPI_SNAPSHOT=1 cargo test -p clawpen-server the_document_matches_its_snapshot",
                first + 1,
                before.lines().nth(first).unwrap_or("<end>"),
                now.lines().nth(first).unwrap_or("<end>"),
            );
        }
    }

    fn doc() -> serde_json::Value {
        document(&Config::default())
    }

    /// Every operation of the document: `(path, method, operation)`.
    fn each_operation(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn every_response_is_described_and_every_error_has_the_error_body() {
        for (path, method, op) in each_operation(&doc()) {
            for (status, r) in op["responses"].as_object().unwrap() {
                assert!(!r["description"].as_str().unwrap_or("").is_empty(), "{method} {path} {status}: no description");
                if status.starts_with('4') || (status.starts_with('5') && !(path == "/readyz" && status == "503")) {
                    assert_eq!(r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
            let has = |s: &str| op["responses"].get(s).is_some();
            assert!(has("413"), "{method} {path}: every route has the body limit");
            if op.get("requestBody").is_some() && path.starts_with("/api/v1/") {
                assert!(has("400") && has("415") && has("422"), "{method} {path}: a JSON body's refusals");
            }
            if op.get("security").is_some() {
                assert!(has("401") && has("403"), "{method} {path}: the token's refusals");
            }
        }
    }

    /// Query parameters are in the query (not the path, utoipa's default for `IntoParams`), and
    /// the counts declare the bounds the server enforces.
    #[test]
    fn query_parameters_are_in_the_query_with_their_bounds() {
        let d = doc();
        let param = |path: &str, name: &str| -> serde_json::Value {
            d["paths"][path]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{path} has no {name}")).clone()
        };
        for (path, name) in [("/api/v1/audit", "limit"), ("/api/v1/agents/{agent_id}/events", "limit"), ("/api/v1/agents/{agent_id}/logs", "tail")] {
            let p = param(path, name);
            assert_eq!((p["in"].as_str(), p["required"].as_bool()), (Some("query"), Some(false)), "{p}");
            assert_eq!((p["schema"]["minimum"].as_i64(), p["schema"]["maximum"].as_i64(), p["schema"]["type"].as_str()), (Some(1), Some(1000), Some("integer")), "{p}");
        }
        let t = param("/api/v1/audit", "tenant");
        assert_eq!((t["in"].as_str(), t["schema"]["pattern"].as_str()), (Some("query"), Some(TenantId::PATTERN)), "{t}");
        assert_eq!(super::super::extract::bounded("limit", Some(1001), 100, 1000).unwrap_err().status, 400);
        assert_eq!(super::super::extract::bounded("limit", Some(0), 100, 1000).unwrap_err().status, 400);
        assert_eq!(super::super::extract::bounded("limit", None, 100, 1000).unwrap(), 100);
    }

    /// Every pattern reads the same in Rust's regex dialect (no look-arounds), and the ones for
    /// ids and names accept what the server accepts and nothing else.
    #[test]
    fn patterns_agree_with_the_server() {
        fn patterns(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(p) = m.get("pattern").and_then(|p| p.as_str()) {
                        out.push(p.to_owned());
                    }
                    m.values().for_each(|v| patterns(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| patterns(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        patterns(&doc(), &mut all);
        assert!(all.len() > 10, "{all:?}");
        for p in &all {
            regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let re = |p: &str| regex::Regex::new(p).unwrap();
        let (tenant, agent) = (re(TenantId::PATTERN), re(AgentId::PATTERN));
        for _ in 0..100 {
            assert!(tenant.is_match(TenantId::new().as_str()) && agent.is_match(AgentId::new().as_str()));
            assert!(re(KeyId::PATTERN).is_match(KeyId::new().as_str()) && re(MemberId::PATTERN).is_match(MemberId::new().as_str()));
            assert!(re(BOT_PATTERN).is_match(TelegramBotId::new().as_str()));
        }
        for bad in ["", "tn_", "ag_aaaaaaaaaaaaaaaaaaaaaaaaaa", "tn_AAAAAAAAAAAAAAAAAAAAAAAAAA", "tn_aaaaaaaaaaaaaaaaaaaaaaaaa1", "../tn_aaaaaaaaaaaaaaaaaaaaaaaaaa"] {
            assert_eq!(tenant.is_match(bad), TenantId::parse(bad).is_ok(), "{bad:?}");
        }
        // Names: the pattern (with maxLength) against validate_name, over every string of up to
        // four characters from an alphabet that holds each class of character the rule names.
        let name = re(NAME_PATTERN);
        let alphabet = ['a', 'Z', '7', '.', '-', '_', ' ', '/', 'é', '\n'];
        let mut strings = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = strings.iter().filter(|s| s.chars().count() == strings.last().unwrap().chars().count()).flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            strings.extend(longer);
        }
        strings.extend(["a".repeat(64), "a".repeat(65), format!("{}.", "a".repeat(63)), "a..b".into(), "a.b.c".into()]);
        for s in &strings {
            let by_doc = name.is_match(s) && s.chars().count() <= MAX_NAME_LEN;
            assert_eq!(by_doc, clawpen_core::names::validate_name(s).is_ok(), "{s:?}");
        }
        assert!(re(NODE_PATTERN).is_match("local"));
    }

    /// Creating a tenant links to the routes that take its id, with the same token.
    #[test]
    fn created_ids_link_to_the_routes_that_take_them() {
        let d = doc();
        let links = &d["paths"]["/api/v1/tenants"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["get_tenant"]["parameters"]["tenant_id"], "$response.body#/id", "{links}");
        assert_eq!(links["get_tenant"]["operationId"], "get_tenant", "{links}");
        assert!(links.get("revoke_key").is_none(), "a key id comes from creating a key");
        let links = &d["paths"]["/api/v1/tenants/{tenant_id}/keys"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["revoke_key"]["parameters"]["tenant_id"], "$request.path.tenant_id", "{links}");
        let links = &d["paths"]["/api/v1/tenants/{tenant_id}/members"]["post"]["responses"]["201"]["links"];
        assert!(links.get("remove_tenant_member").is_some() && links.as_object().unwrap().len() == 1, "{links}");
        let links = d["paths"]["/api/v1/agents"]["post"]["responses"]["201"]["links"].as_object().unwrap().clone();
        assert_eq!(links.len(), 17, "{links:?}");
        for op in ["get_agent_file", "put_agent_file", "agent_memory", "forget_agent_memory", "backup_agent", "list_agent_backups", "create_schedule", "list_agent_schedules"] {
            assert!(links.contains_key(op), "{op}: {links:?}");
        }
    }

    #[test]
    fn the_served_document_lists_the_plans() {
        let served = doc();
        let plans = &served["components"]["schemas"]["SetPlan"]["properties"]["plan"]["enum"];
        assert!(plans.as_array().unwrap().iter().any(|p| p == "free"), "{plans}");
        let nullable = &served["components"]["schemas"]["CreateTenant"]["properties"]["plan"]["enum"];
        assert!(nullable.as_array().unwrap().contains(&serde_json::Value::Null), "{nullable}");
    }
}
