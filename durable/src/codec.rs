//! Payloads are JSON: readable in the store, stable across versions of this crate.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Encodes a payload, refusing one over `limit` bytes before anything is written.
pub(crate) fn encode<T: Serialize + ?Sized>(
    id: &str,
    what: &'static str,
    value: &T,
    limit: usize,
) -> Result<String, Error> {
    let json = serde_json::to_string(value).map_err(|e| Error::Codec {
        id: id.to_owned(),
        what: format!("encode {what}"),
        message: e.to_string(),
    })?;
    if json.len() > limit {
        return Err(Error::PayloadTooLarge { id: id.to_owned(), what, size: json.len(), limit });
    }
    Ok(json)
}

/// Decodes a resolved value.
pub(crate) fn decode<T: DeserializeOwned>(id: &str, json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|e| Error::Codec {
        id: id.to_owned(),
        what: format!("decode the value as {}", std::any::type_name::<T>()),
        message: e.to_string(),
    })
}

/// A JSON payload for a message: whole if short, else its first 120 characters.
pub(crate) fn truncated(json: &str) -> String {
    const SHOWN: usize = 120;
    match json.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}… ({} bytes)", &json[..end], json.len()),
        None => json.to_owned(),
    }
}

/// The longest call key, in bytes.
pub(crate) const MAX_KEY: usize = 256;

/// A call's key as the store records it: a string as it is, anything else as its
/// JSON. An error, for the call `id`, if it does not encode or cannot be used.
pub(crate) fn call_key<K: Serialize + ?Sized>(id: &str, key: &K) -> Result<String, Error> {
    let invalid = |reason: String| Error::InvalidKey { id: id.to_owned(), reason };
    let json = serde_json::to_value(key).map_err(|e| invalid(format!("it does not encode: {e}")))?;
    let key = match json {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(invalid(format!("a key has 1 to {MAX_KEY} bytes; this one has {}", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(format!("{key:?} holds control characters")));
    }
    Ok(key)
}
