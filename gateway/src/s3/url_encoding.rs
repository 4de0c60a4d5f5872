//! `encoding-type=url` in listings. S3 then percent-encodes the keys and prefixes it lists, so
//! that keys holding characters XML 1.0 cannot carry (U+0001) still list, and botocore, which
//! always asks for it, decodes them with `unquote_plus`. Unreserved characters and `/` are
//! kept; every other byte of the UTF-8 becomes `%XX`, so a `+` reads back as `+` and a space
//! as a space. Written here rather than taken from a crate: it is eight lines, and the set of
//! kept characters must be exactly this one.

use s3s::dto::EncodingType;
use s3s::S3Result;

/// Whether a listing asked for URL encoding; any other encoding is refused, as S3 does.
pub fn wanted(encoding: Option<&EncodingType>) -> S3Result<bool> {
    match encoding.map(EncodingType::as_str) {
        None => Ok(false),
        Some(name) if name.eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(s3s::s3_error!(InvalidArgument, "Invalid Encoding Method specified in Request")),
    }
}

/// `text` percent-encoded as S3 encodes listed keys.
pub fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => encoded.push(char::from(byte)),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// [`encode`] on an optional field when `wanted`.
pub fn encode_if(wanted: bool, text: Option<String>) -> Option<String> {
    match wanted {
        true => text.map(|text| encode(&text)),
        false => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_s3_encodes_them() {
        assert_eq!(encode("enc/a+b c%41\u{1}é~"), "enc/a%2Bb%20c%2541%01%C3%A9~");
        assert_eq!(encode_if(false, Some("a b".to_owned())).as_deref(), Some("a b"));
    }

    #[test]
    fn only_url_encoding_is_accepted() {
        assert!(!wanted(None).unwrap());
        assert!(wanted(Some(&EncodingType::from("url".to_owned()))).unwrap());
        assert!(wanted(Some(&EncodingType::from("base64".to_owned()))).is_err());
    }
}
