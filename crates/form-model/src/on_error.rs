//! `on-error`: what the `form-flatten` SmartModule does with a record it cannot flatten.
//!
//! - `fail` (the default, and what the s3-sink uses): the record is a record-level error
//!   (`<reason>: <detail>`); the sink's runner sends it to the dead-letter queue. On a Fluvio
//!   SPU an error ends the stream, so this mode is for hosts that handle record errors.
//! - `emit`: the record yields one output record instead, so a stream never stops:
//!
//!   ```json
//!   {"error":{"reason":"missing_field","detail":"missing field `event.event_happened_at`"},"input":{…}}
//!   ```
//!
//!   `reason` is the dead-letter reason code of the error ([`crate::DlqReason`]; the flatten
//!   gives `invalid_json`, `missing_field`, `wrong_type`, `invalid_timestamp` or
//!   `form_not_found`), `detail` the error's message (the text after `<reason>: ` in `fail`
//!   mode). `input` is the record's value: when it is JSON (as serde_json reads it), that
//!   JSON as written, with the whitespace between tokens removed (numbers, escapes and key
//!   order untouched); otherwise a JSON string of its text, with every byte that is not
//!   UTF-8 replaced by U+FFFD (the bytes themselves are still in the topic, at the same
//!   offset: a map SmartModule's output keeps its input's offset).
//!
//! A record that flattens gives the same rows in both modes, byte for byte.

use crate::error::RecordError;
use crate::flatten::flatten_to_json;

/// The module parameter's name (`transforms: [{uses: form-flatten, with: {on-error: emit}}]`).
pub const ON_ERROR_PARAM: &str = "on-error";

/// The `on-error` parameter of the `form-flatten` SmartModule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// A record that cannot be flattened is a record-level error (the default).
    #[default]
    Fail,
    /// A record that cannot be flattened yields one error record (see the module docs).
    Emit,
}

impl OnError {
    /// The parameter value: `fail` or `emit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Emit => "emit",
        }
    }

    /// Parses a parameter value (exactly `fail` or `emit`).
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "fail" => Ok(Self::Fail),
            "emit" => Ok(Self::Emit),
            other => Err(format!(
                "form-flatten: `{ON_ERROR_PARAM}` is `{other}`: use `fail` (the default: a record \
                 that cannot be flattened is a record error) or `emit` (it becomes one \
                 {{\"error\":…,\"input\":…}} record)"
            )),
        }
    }

    /// Reads the module's parameters (the `with:` map): `on-error` is the only one; an
    /// unknown name is refused too, so that a misspelt `on_error: emit` does not run as `fail`.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut mode = Self::default();
        for (name, value) in params {
            if name != ON_ERROR_PARAM {
                return Err(format!(
                    "form-flatten: unknown parameter `{name}`: the only parameter is \
                     `{ON_ERROR_PARAM}` (`fail` or `emit`)"
                ));
            }
            mode = Self::parse(value)?;
        }
        Ok(mode)
    }
}

/// `on-error: emit`: appends to `out` the rows of `input` (exactly what [`flatten_to_json`]
/// writes) or, when it cannot be flattened, its error record; returns the error in that case.
pub fn flatten_or_error_record(input: &[u8], out: &mut Vec<u8>) -> Option<RecordError> {
    match flatten_to_json(input, out) {
        Ok(()) => None,
        Err(err) => {
            write_error_record(input, &err, out);
            Some(err)
        }
    }
}

/// Appends the error record of `input` for `err`:
/// `{"error":{"reason":…,"detail":…},"input":…}` (see the module docs for `input`).
pub fn write_error_record(input: &[u8], err: &RecordError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":{\"reason\":");
    write_json_str(out, err.reason().as_str());
    out.extend_from_slice(b",\"detail\":");
    write_json_str(out, &err.to_string());
    out.extend_from_slice(b"},\"input\":");
    if serde_json::from_slice::<serde_json::Value>(input).is_ok() {
        write_minified(out, input);
    } else {
        write_json_str(out, &String::from_utf8_lossy(input));
    }
    out.push(b'}');
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Copies JSON text that serde_json has accepted, without the whitespace between tokens.
fn write_minified(out: &mut Vec<u8>, json: &[u8]) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_values_and_nothing_else() {
        assert_eq!(OnError::parse("fail"), Ok(OnError::Fail));
        assert_eq!(OnError::parse("emit"), Ok(OnError::Emit));
        for bad in ["", "Emit", " emit", "skip", "true"] {
            let e = OnError::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`on-error` is `{bad}`")), "{e}");
        }
        assert_eq!(OnError::from_params([]), Ok(OnError::Fail));
        assert_eq!(
            OnError::from_params([("on-error", "emit")]),
            Ok(OnError::Emit)
        );
        assert_eq!(
            OnError::from_params([("on_error", "emit")]).unwrap_err(),
            "form-flatten: unknown parameter `on_error`: the only parameter is `on-error` (`fail` or `emit`)"
        );
    }

    #[test]
    fn minify_keeps_strings_whole() {
        let mut out = Vec::new();
        write_minified(
            &mut out,
            b" { \"a b\" : [ 1 , 2.50 ] ,\n\t\"c\\\" d\\\\\" : \"x \\\\\" , \"e\":\"\\u0020 \" } ",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a b":[1,2.50],"c\" d\\":"x \\","e":"\u0020 "}"#
        );
    }
}
