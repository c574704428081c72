//! Serde adapters for fixed-size byte fields on the wire, written once: hex
//! ([`hex_bytes`]) and standard base64 with padding ([`b64_bytes`]). A value of the
//! wrong length is refused when it is decoded, so a wire struct never holds one.

/// `[u8; N]` as lowercase hex (any case accepted).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes of hex")))?;
        Ok(out)
    }
}

/// `[u8; N]` as standard base64 with padding.
pub(crate) mod b64_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let raw = STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("not base64"))?;
        raw.try_into().map_err(|raw: Vec<u8>| {
            serde::de::Error::custom(format!("expected {N} bytes, got {}", raw.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "super::hex_bytes")]
        h: [u8; 4],
        #[serde(with = "super::b64_bytes")]
        b: [u8; 3],
    }

    #[test]
    fn fixed_size_fields_round_trip_and_refuse_other_lengths() {
        let v = Both {
            h: [1, 2, 3, 0xff],
            b: [9, 8, 7],
        };
        let json = serde_json::to_string(&v).expect("serializes");
        assert_eq!(json, r#"{"h":"010203ff","b":"CQgH"}"#);
        assert_eq!(serde_json::from_str::<Both>(&json).expect("decodes"), v);
        for bad in [
            r#"{"h":"0102","b":"CQgH"}"#,
            r#"{"h":"010203ff","b":"CQgHBg=="}"#,
            r#"{"h":"zz0203ff","b":"CQgH"}"#,
            r#"{"h":"010203ff","b":"!!!!"}"#,
        ] {
            assert!(serde_json::from_str::<Both>(bad).is_err(), "{bad}");
        }
    }
}
