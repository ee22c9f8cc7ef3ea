//! GGUF metadata arrays held the way the file holds them: strings packed into one buffer and
//! fixed-size scalars as their little-endian bytes. A 262 144-token vocabulary's tokens,
//! scores and types cost ~4 MB this way instead of ~34 MB as one `Value` per element, and
//! they stay in memory as long as the model is loaded.

use super::value::{Value, ValueType};
use crate::packed::PackedStrings;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    Strings(PackedStrings),
    /// Elements of the fixed-size scalar type `elem`, little-endian as on disk (`bytes.len()`
    /// is a multiple of the type's size; bools are 0 or 1).
    Scalars {
        elem: ValueType,
        bytes: Vec<u8>,
    },
    /// Arrays of arrays (no key Hearth reads has them; kept so a file round-trips).
    Arrays(Vec<Array>),
}

impl Array {
    /// An array of `elem` from `values`; `Error::Gguf` when one is of another type.
    pub fn from_values(elem: ValueType, values: impl IntoIterator<Item = Value>) -> Result<Self> {
        let mismatch = |v: &Value| {
            Error::Gguf(format!(
                "a {elem:?} array cannot hold {v} (a {:?})",
                v.value_type()
            ))
        };
        let mut a = match elem {
            ValueType::String => Array::Strings(PackedStrings::default()),
            ValueType::Array => Array::Arrays(Vec::new()),
            _ => Array::Scalars {
                elem,
                bytes: Vec::new(),
            },
        };
        for v in values {
            match (&mut a, &v) {
                (Array::Strings(p), Value::String(s)) => p.push(s),
                (Array::Arrays(items), Value::Array(inner)) => items.push(inner.clone()),
                (Array::Scalars { bytes, .. }, _) if v.value_type() == elem => {
                    v.put_scalar(bytes);
                }
                _ => return Err(mismatch(&v)),
            }
        }
        Ok(a)
    }

    pub fn from_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Array::Strings(items.into_iter().collect())
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::Strings(_) => ValueType::String,
            Array::Scalars { elem, .. } => *elem,
            Array::Arrays(_) => ValueType::Array,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::Strings(p) => p.len(),
            Array::Scalars { elem, bytes } => bytes.len() / elem.min_size(),
            Array::Arrays(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a `Value` (a string element is copied out).
    pub fn get(&self, i: usize) -> Option<Value> {
        match self {
            Array::Strings(p) => p.get(i).map(|s| Value::String(s.to_string())),
            Array::Scalars { elem, bytes } => {
                let size = elem.min_size();
                let b = bytes.get(i * size..(i + 1) * size)?;
                Value::from_scalar(*elem, b)
            }
            Array::Arrays(items) => items.get(i).cloned().map(Value::Array),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The elements when this is an array of strings, without copying them.
    pub fn strings(&self) -> Option<&PackedStrings> {
        match self {
            Array::Strings(p) => Some(p),
            _ => None,
        }
    }

    /// The first `n` elements (all when there are fewer).
    pub fn truncated(&self, n: usize) -> Array {
        match self {
            Array::Strings(p) => Array::from_strings(p.iter().take(n)),
            Array::Scalars { elem, bytes } => Array::Scalars {
                elem: *elem,
                bytes: bytes[..bytes.len().min(n * elem.min_size())].to_vec(),
            },
            Array::Arrays(items) => Array::Arrays(items.iter().take(n).cloned().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_come_back_as_values() {
        let values = [Value::F32(1.5), Value::F32(-0.0), Value::F32(f32::MAX)];
        let a = Array::from_values(ValueType::F32, values.clone()).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().collect::<Vec<_>>(), values);
        assert_eq!(a.truncated(2).iter().collect::<Vec<_>>(), values[..2]);
        assert_eq!(a.get(3), None);

        let s = Array::from_values(
            ValueType::String,
            ["a", "▁b"].map(|s| Value::String(s.into())),
        )
        .unwrap();
        assert_eq!(s, Array::from_strings(["a", "▁b"]));
        assert_eq!(s.get(1), Some(Value::String("▁b".into())));

        let e = Array::from_values(ValueType::I32, [Value::I32(1), Value::U32(2)]).unwrap_err();
        assert!(e.to_string().contains("I32 array cannot hold 2"), "{e}");
    }
}
