//! Turning one decoded record (a JSON object, from either file type) into a [`Sample`]:
//! field checks with messages that say what was expected, `meta`, and the stable id.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Body, Format, Message, Sample};

/// The roles a chat message may have.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Builds the sample for record `row` of a file in `format` (never `Auto`).
///
/// `messages_may_be_text`: accept a chat `messages` field that is a string holding the
/// JSON array (Parquet files store it that way). The error is the reason the record is
/// bad, phrased for a user.
///
/// `prompt_only` reads prompts to answer: the response may be missing or empty (`output`,
/// `completion`; a conversation may end with a user turn, and a final assistant turn is then
/// the existing response). The id of a record with a response is the same either way.
pub(crate) fn to_sample(
    format: Format,
    row: usize,
    mut record: Map<String, Value>,
    messages_may_be_text: bool,
    prompt_only: bool,
) -> Result<Sample, String> {
    let mut input_len = 0;
    let (body, used) = match format {
        Format::Auto => return Err("internal: format `auto` was not resolved".to_string()),
        Format::Alpaca => {
            let (body, used, input) = alpaca(&record, prompt_only)?;
            input_len = input;
            (body, used)
        }
        Format::Chat => chat(&record, messages_may_be_text, prompt_only)?,
        Format::PromptCompletion => {
            let prompt = string_field(&record, "prompt", format)?;
            let completion = if prompt_only {
                optional_string(&record, "completion", format)?
            } else {
                non_empty(
                    string_field(&record, "completion", format)?,
                    "completion",
                    format,
                )?
            };
            let used = object([
                ("prompt", prompt.clone().into()),
                ("completion", completion.clone().into()),
            ]);
            (
                Body::Plain {
                    prompt,
                    response: completion,
                },
                used,
            )
        }
        Format::Text => {
            let text = non_empty(string_field(&record, "text", format)?, "text", format)?;
            let used = object([("text", text.clone().into())]);
            (
                Body::Plain {
                    prompt: String::new(),
                    response: text,
                },
                used,
            )
        }
    };
    for field in format.fields() {
        record.remove(*field);
    }
    let id = format!("{row}-{}", content_hash(&used));
    Ok(Sample {
        id,
        row,
        body,
        meta: record,
        input_len,
    })
}

/// Alpaca: one user message (instruction, then input after a blank line when present), and
/// the byte length of the `input` part at the end of that message.
fn alpaca(record: &Map<String, Value>, prompt_only: bool) -> Result<(Body, Value, usize), String> {
    let format = Format::Alpaca;
    let instruction = string_field(record, "instruction", format)?;
    let input = optional_string(record, "input", format)?;
    let output = if prompt_only {
        optional_string(record, "output", format)?
    } else {
        non_empty(string_field(record, "output", format)?, "output", format)?
    };
    let user = match (instruction.is_empty(), input.is_empty()) {
        (_, true) => instruction.clone(),
        (true, false) => input.clone(),
        (false, false) => format!("{instruction}\n\n{input}"),
    };
    if user.trim().is_empty() {
        return Err(format!(
            "`instruction` and `input` are both empty: there is no prompt; {}",
            format.expectation()
        ));
    }
    // The part the middle truncation cuts first: the input with the blank line before it.
    let input_len = match (instruction.is_empty(), input.is_empty()) {
        (_, true) => 0,
        (true, false) => input.len(),
        (false, false) => input.len() + 2,
    };
    let used = object([
        ("instruction", instruction.into()),
        ("input", input.into()),
        ("output", output.clone().into()),
    ]);
    let body = Body::Chat {
        messages: vec![Message {
            role: "user".to_string(),
            content: user,
        }],
        response: output,
    };
    Ok((body, used, input_len))
}

/// Chat: checks roles, that the last message is the assistant's and that something precedes it.
fn chat(
    record: &Map<String, Value>,
    messages_may_be_text: bool,
    prompt_only: bool,
) -> Result<(Body, Value), String> {
    let format = Format::Chat;
    let expect = format.expectation();
    let decoded;
    let list = match record.get("messages") {
        None | Some(Value::Null) => return Err(format!("missing field `messages`; {expect}")),
        Some(Value::Array(list)) => list,
        Some(Value::String(text)) if messages_may_be_text => {
            decoded = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("`messages` holds text that is not JSON ({e}); {expect}"))?;
            match &decoded {
                Value::Array(list) => list,
                other => {
                    return Err(format!(
                        "`messages` holds JSON {}, expected an array; {expect}",
                        kind(other)
                    ))
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "field `messages` is {}, expected an array; {expect}",
                kind(other)
            ))
        }
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(format!(
                "messages[{i}] is {}, expected an object {{role, content}}; {expect}",
                kind(item)
            ));
        };
        let get = |key: &str| match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(format!(
                "messages[{i}] is missing string field `{key}`; {expect}"
            )),
            Some(other) => Err(format!(
                "messages[{i}].{key} is {}, expected a string; {expect}",
                kind(other)
            )),
        };
        let role = get("role")?;
        let content = get("content")?;
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "messages[{i}].role is `{role}`, expected one of system, user, assistant; {expect}"
            ));
        }
        messages.push(Message { role, content });
    }
    if prompt_only && messages.last().is_some_and(|m| m.role != "assistant") {
        let used = object([(
            "messages",
            Value::Array(
                messages
                    .iter()
                    .map(|m| {
                        object([
                            ("role", m.role.clone().into()),
                            ("content", m.content.clone().into()),
                        ])
                    })
                    .collect(),
            ),
        )]);
        return Ok((
            Body::Chat {
                messages,
                response: String::new(),
            },
            used,
        ));
    }
    let Some(last) = messages.pop() else {
        return Err(format!("`messages` is empty; {expect}"));
    };
    if last.role != "assistant" {
        return Err(format!(
            "the last message has role `{}`; it must be `assistant` (the response the loss is on); {expect}",
            last.role
        ));
    }
    if messages.is_empty() {
        return Err(format!(
            "`messages` holds only the assistant's answer; at least one message must come before it; {expect}"
        ));
    }
    if !prompt_only && last.content.trim().is_empty() {
        return Err(format!(
            "the final assistant message is empty (the response must be non-empty); {expect}"
        ));
    }
    let all: Vec<Value> = messages
        .iter()
        .chain(std::iter::once(&last))
        .map(|m| {
            object([
                ("role", m.role.clone().into()),
                ("content", m.content.clone().into()),
            ])
        })
        .collect();
    let used = object([("messages", Value::Array(all))]);
    Ok((
        Body::Chat {
            messages,
            response: last.content,
        },
        used,
    ))
}

/// A required string field.
fn string_field(record: &Map<String, Value>, key: &str, format: Format) -> Result<String, String> {
    match record.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!(
            "missing string field `{key}`; {}",
            format.expectation()
        )),
        Some(other) => Err(format!(
            "field `{key}` is {}, expected a string; {}",
            kind(other),
            format.expectation()
        )),
    }
}

/// An optional string field: missing or null reads as "".
fn optional_string(
    record: &Map<String, Value>,
    key: &str,
    format: Format,
) -> Result<String, String> {
    match record.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field `{key}` is {}, expected a string; {}",
            kind(other),
            format.expectation()
        )),
    }
}

/// Rejects an empty (or whitespace-only) response.
fn non_empty(value: String, key: &str, format: Format) -> Result<String, String> {
    if value.trim().is_empty() {
        Err(format!(
            "`{key}` is empty (the response must be non-empty); {}",
            format.expectation()
        ))
    } else {
        Ok(value)
    }
}

/// "a number", "an array", ...: for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// First 8 hex characters of the sha256 of the canonical JSON of `used`.
pub(crate) fn content_hash(used: &Value) -> String {
    let mut text = String::new();
    canonical_json(used, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted at every level and no whitespace, independent of the
/// map type serde_json was built with (so ids never change with a cargo feature).
pub(crate) fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(k) {
                    canonical_json(item, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
