//! Parameters SPDK defines for a method that Ferry accepts without taking them itself.
//!
//! SPDK's clients send every parameter its schema (`schema/schema.yaml`) defines, with
//! defaults, and SPDK's saved configurations carry them all. A method lists those it does not
//! decode itself as [`SpdkParam`]s; the dispatcher checks each one's type and value and removes
//! it before the handler's own (strict) decoding. A value Ferry cannot honour (metadata, a
//! protection-information format, a physical block size unlike the logical one) is refused
//! with -32602 naming the parameter; any other value is accepted and logged.

use super::error::RpcError;
use serde_json::{Map, Value};

/// The JSON type SPDK's schema gives a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `true` or `false`.
    Bool,
    /// An unsigned integer no larger than this.
    Uint(u64),
    /// A signed integer in this range.
    Int(i64, i64),
    /// A string.
    Str,
    /// A JSON object (SPDK decodes its members itself).
    Object,
    /// A JSON array.
    Array,
}

/// `uint8` in SPDK's schema.
pub const U8: ParamType = ParamType::Uint(u8::MAX as u64);
/// `uint16`.
pub const U16: ParamType = ParamType::Uint(u16::MAX as u64);
/// `uint32`.
pub const U32: ParamType = ParamType::Uint(u32::MAX as u64);
/// `uint64`.
pub const U64: ParamType = ParamType::Uint(u64::MAX);
/// `int32`.
pub const I32: ParamType = ParamType::Int(i32::MIN as i64, i32::MAX as i64);

/// Which values of the parameter Ferry can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Honours {
    /// Every value: the parameter changes nothing Ferry does (a pool size, a hint, an option
    /// of a subsystem Ferry does not have).
    Any,
    /// Only this number, the one that means "off"; the reason names what Ferry lacks.
    Only(i64, &'static str),
    /// 0 ("not set") or the same value as the named parameter.
    ZeroOrSameAs(&'static str),
}

/// One parameter SPDK defines for a method and the method leaves to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpdkParam {
    /// SPDK's name for it.
    pub name: &'static str,
    /// Its JSON type.
    pub ty: ParamType,
    /// The values Ferry honours.
    pub honours: Honours,
}

impl SpdkParam {
    /// A parameter that changes nothing Ferry does: any value of its type is accepted.
    pub const fn any(name: &'static str, ty: ParamType) -> Self {
        SpdkParam { name, ty, honours: Honours::Any }
    }

    /// A parameter Ferry honours only at `value` (SPDK's "off"); `why` says what Ferry lacks.
    pub const fn only(name: &'static str, ty: ParamType, value: i64, why: &'static str) -> Self {
        SpdkParam { name, ty, honours: Honours::Only(value, why) }
    }

    /// A parameter that must be 0 or equal the parameter `other`.
    pub const fn zero_or_same_as(name: &'static str, ty: ParamType, other: &'static str) -> Self {
        SpdkParam { name, ty, honours: Honours::ZeroOrSameAs(other) }
    }

    fn check_type(&self, v: &Value) -> Result<(), RpcError> {
        let ok = match self.ty {
            ParamType::Bool => v.is_boolean(),
            ParamType::Uint(max) => v.as_u64().is_some_and(|n| n <= max),
            ParamType::Int(min, max) => v.as_i64().is_some_and(|n| (min..=max).contains(&n)),
            ParamType::Str => v.is_string(),
            ParamType::Object => v.is_object(),
            ParamType::Array => v.is_array(),
        };
        if ok {
            return Ok(());
        }
        let expected = match self.ty {
            ParamType::Bool => "a boolean".to_string(),
            ParamType::Uint(max) => format!("an unsigned integer up to {max}"),
            ParamType::Int(min, max) => format!("an integer from {min} to {max}"),
            ParamType::Str => "a string".to_string(),
            ParamType::Object => "an object".to_string(),
            ParamType::Array => "an array".to_string(),
        };
        Err(RpcError::invalid_params(format!("{} must be {expected}, not {v}", self.name)))
    }

    fn check_value(&self, v: &Value, all: &Map<String, Value>) -> Result<(), RpcError> {
        match self.honours {
            Honours::Any => Ok(()),
            Honours::Only(only, _) if v.as_i64() == Some(only) => Ok(()),
            Honours::Only(only, why) => {
                Err(RpcError::invalid_params(format!("{} {v} is not supported ({why}); only {only} is", self.name)))
            }
            Honours::ZeroOrSameAs(other) => {
                if v.as_u64() == Some(0) || all.get(other) == Some(v) {
                    return Ok(());
                }
                Err(RpcError::invalid_params(format!(
                    "{} {v} is not supported: it must be 0 or equal {other}",
                    self.name
                )))
            }
        }
    }
}

/// Checks and removes from `params` the parameters of `spdk` that it holds; returns the rest
/// for the method's own decoding and the names removed. Params that are not an object are
/// left for the method to refuse.
pub fn strip(
    spdk: &'static [SpdkParam],
    params: Option<Value>,
) -> Result<(Option<Value>, Vec<&'static str>), RpcError> {
    let Some(Value::Object(mut map)) = params else { return Ok((params, Vec::new())) };
    let mut taken = Vec::new();
    for p in spdk {
        let Some(v) = map.get(p.name) else { continue };
        p.check_type(v)?;
        p.check_value(v, &map)?;
        taken.push(p.name);
    }
    for name in &taken {
        map.remove(*name);
    }
    Ok((Some(Value::Object(map)), taken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PARAMS: &[SpdkParam] = &[
        SpdkParam::any("md_interleave", ParamType::Bool),
        SpdkParam::only("md_size", U32, 0, "no metadata"),
        SpdkParam::zero_or_same_as("physical_block_size", U32, "block_size"),
        SpdkParam::any("numa_id", I32),
    ];

    fn strip_json(v: Value) -> Result<(Value, Vec<&'static str>), RpcError> {
        strip(PARAMS, Some(v)).map(|(p, t)| (p.unwrap(), t))
    }

    #[test]
    fn accepted_parameters_are_removed_and_the_rest_kept() {
        let (rest, taken) = strip_json(json!({"name": "M", "block_size": 512, "md_interleave": true, "md_size": 0,
                                               "physical_block_size": 512, "numa_id": -1}))
        .unwrap();
        assert_eq!(rest, json!({"name": "M", "block_size": 512}));
        assert_eq!(taken, ["md_interleave", "md_size", "physical_block_size", "numa_id"]);
        assert_eq!(strip_json(json!({"physical_block_size": 0})).unwrap().0, json!({}));
        assert_eq!(strip(PARAMS, None).unwrap(), (None, vec![]));
        assert_eq!(strip(PARAMS, Some(json!([1]))).unwrap().0, Some(json!([1])), "left for the method to refuse");
    }

    #[test]
    fn values_ferry_cannot_honour_are_refused_naming_the_parameter() {
        for (params, named) in [
            (json!({"md_size": 8}), "md_size"),
            (json!({"md_size": "0"}), "md_size"),
            (json!({"md_interleave": 1}), "md_interleave"),
            (json!({"numa_id": 1u64 << 40}), "numa_id"),
            (json!({"block_size": 512, "physical_block_size": 4096}), "physical_block_size"),
            (json!({"physical_block_size": -1}), "physical_block_size"),
        ] {
            let e = strip_json(params.clone()).unwrap_err();
            assert_eq!(e.code, super::super::error::INVALID_PARAMS, "{params}");
            assert!(e.message.contains(named), "{params}: {}", e.message);
        }
    }
}
