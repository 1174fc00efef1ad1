//! Floats that survive a JSON round trip.
//!
//! JSON has no infinity or NaN, and serde_json writes them as `null`, which an `f64` field then
//! refuses: a report holding one division by a zero time could not be read back by `diagnose`.
//! These fields write a non-finite value as the string `"inf"`, `"-inf"` or `"nan"` and read
//! either form back, so every value rigdoctor writes, it reads.

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Num(f64),
    Word(String),
}

fn word(v: f64) -> &'static str {
    if v.is_nan() {
        "nan"
    } else if v > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

fn from_repr<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
    match r {
        Repr::Num(v) => Ok(v),
        Repr::Word(w) => match w.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "nan" => Ok(f64::NAN),
            other => Err(E::custom(format!(
                "expected a number, \"inf\", \"-inf\" or \"nan\", found {other:?}"
            ))),
        },
    }
}

/// `#[serde(with = "float")]` on an `f64`.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_str(word(*v))
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    from_repr(Repr::deserialize(d)?)
}

/// `#[serde(with = "float::seq")]` on a `Vec<f64>`.
pub mod seq {
    use super::{from_repr, Repr};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            if x.is_finite() {
                seq.serialize_element(x)?;
            } else {
                seq.serialize_element(super::word(*x))?;
            }
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(from_repr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        x: f64,
        #[serde(with = "super::seq")]
        v: Vec<f64>,
    }

    #[test]
    fn every_value_round_trips() {
        for x in [0.0, -1.5, 1e300, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let t = T { x, v: vec![x, 2.0] };
            let json = serde_json::to_string(&t).unwrap();
            let back: T = serde_json::from_str(&json).unwrap();
            assert!(back.x == x || (x.is_nan() && back.x.is_nan()), "{json}");
            assert_eq!(back.v.len(), 2);
        }
        assert!(serde_json::from_str::<T>(r#"{"x":"lots","v":[]}"#).is_err());
    }
}
