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
