//! Parameters over r2r: [`ParamBridge`] implements `r2r::RosParams` on top of
//! [`NodeSettings`] validation, so `ros2 param set` (rcl_interfaces/SetParameters) gets our
//! reasons, and every accepted change is sent to the scheduler through a watch channel.

use r2r::indexmap::IndexMap;
use r2r::{Parameter, ParameterValue, RosParams};
use tokio::sync::watch;

use crate::pipeline::scheduler::SmSplit;
use crate::pipeline::settings::{self, NodeSettings, ParamValue, PARAMS};

pub fn from_r2r(v: &ParameterValue) -> Option<ParamValue> {
    Some(match v {
        ParameterValue::NotSet | ParameterValue::ByteArray(_) => return None,
        ParameterValue::Bool(x) => ParamValue::Bool(*x),
        ParameterValue::Integer(x) => ParamValue::Integer(*x),
        ParameterValue::Double(x) => ParamValue::Double(*x),
        ParameterValue::String(x) => ParamValue::String(x.clone()),
        ParameterValue::BoolArray(x) => ParamValue::BoolArray(x.clone()),
        ParameterValue::IntegerArray(x) => ParamValue::IntegerArray(x.clone()),
        ParameterValue::DoubleArray(x) => ParamValue::DoubleArray(x.clone()),
        ParameterValue::StringArray(x) => ParamValue::StringArray(x.clone()),
    })
}

pub fn to_r2r(v: ParamValue) -> ParameterValue {
    match v {
        ParamValue::Bool(x) => ParameterValue::Bool(x),
        ParamValue::Integer(x) => ParameterValue::Integer(x),
        ParamValue::Double(x) => ParameterValue::Double(x),
        ParamValue::String(x) => ParameterValue::String(x),
        ParamValue::BoolArray(x) => ParameterValue::BoolArray(x),
        ParamValue::IntegerArray(x) => ParameterValue::IntegerArray(x),
        ParamValue::DoubleArray(x) => ParameterValue::DoubleArray(x),
        ParamValue::StringArray(x) => ParameterValue::StringArray(x),
    }
}

fn refused(name: &str, msg: String) -> r2r::Error {
    r2r::Error::ParameterValueConv {
        name: name.to_string(),
        msg,
    }
}

/// Reads the launch overrides (`-p`, `--params-file`) that rcl gave the node into settings.
/// A bad value of a known parameter is an error (the node does not start with it); unknown
/// names are logged and ignored (`use_sim_time` and friends).
pub fn settings_from_overrides(
    params: &IndexMap<String, Parameter>,
) -> std::result::Result<NodeSettings, String> {
    let mut s = NodeSettings::default();
    for (name, p) in params.iter() {
        if settings::spec(name).is_none() {
            if name != "use_sim_time" {
                log::warn!("parameter {name:?} is not a pi0 parameter: ignored");
            }
            continue;
        }
        let v =
            from_r2r(&p.value).ok_or_else(|| format!("{name}: value {:?} not usable", p.value))?;
        s.set(name, &v).map_err(|r| format!("{name}: {r}"))?;
    }
    s.validate()?;
    Ok(s)
}

/// The node's parameters as r2r sees them.
pub struct ParamBridge {
    pub settings: NodeSettings,
    tx: watch::Sender<NodeSettings>,
}

impl ParamBridge {
    pub fn new(settings: NodeSettings) -> (Self, watch::Receiver<NodeSettings>) {
        let (tx, rx) = watch::channel(settings.clone());
        (ParamBridge { settings, tx }, rx)
    }

    /// Puts the split parameters back to what the GPU runs after it could not take
    /// `requested`; false (nothing changed) when they have moved on since.
    pub fn restore_split(&mut self, requested: SmSplit, restored: SmSplit) -> bool {
        if SmSplit::of(&self.settings) != requested {
            return false;
        }
        restored.write_to(&mut self.settings);
        self.tx.send_replace(self.settings.clone());
        true
    }
}

impl RosParams for ParamBridge {
    fn register_parameters(
        &mut self,
        _prefix: &str,
        _param: Option<Parameter>,
        params: &mut IndexMap<String, Parameter>,
    ) -> r2r::Result<()> {
        for spec in PARAMS {
            params.shift_remove(spec.name);
            let value = to_r2r(
                self.settings
                    .get(spec.name)
                    .expect("every spec has a getter"),
            );
            params.insert(
                spec.name.to_string(),
                Parameter {
                    value,
                    description: spec.description,
                },
            );
        }
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        self.settings
            .get(name)
            .map(to_r2r)
            .ok_or_else(|| r2r::Error::InvalidParameterName {
                name: name.to_string(),
            })
    }

    fn set_parameter(&mut self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        let v = from_r2r(value)
            .ok_or_else(|| refused(name, format!("{name}: unsupported value {value:?}")))?;
        match self.settings.set_live(name, &v) {
            Ok(()) => {
                log::info!("parameter {name} := {v}");
                self.tx.send_replace(self.settings.clone());
                Ok(())
            }
            Err(reason) => {
                log::warn!("parameter {name} := {v} refused: {reason}");
                Err(refused(name, reason))
            }
        }
    }

    fn check_parameter(&self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        let v = from_r2r(value)
            .ok_or_else(|| refused(name, format!("{name}: unsupported value {value:?}")))?;
        self.settings
            .clone()
            .set_live(name, &v)
            .map_err(|r| refused(name, r))
    }
}

/// `rcl_interfaces/ParameterValue` of a value (for `/parameter_events`).
pub fn to_msg(v: &ParamValue) -> r2r::rcl_interfaces::msg::ParameterValue {
    use r2r::rcl_interfaces::msg::{ParameterType as T, ParameterValue as M};
    let mut m = M::default();
    match v.clone() {
        ParamValue::Bool(x) => {
            m.type_ = T::PARAMETER_BOOL as u8;
            m.bool_value = x;
        }
        ParamValue::Integer(x) => {
            m.type_ = T::PARAMETER_INTEGER as u8;
            m.integer_value = x;
        }
        ParamValue::Double(x) => {
            m.type_ = T::PARAMETER_DOUBLE as u8;
            m.double_value = x;
        }
        ParamValue::String(x) => {
            m.type_ = T::PARAMETER_STRING as u8;
            m.string_value = x;
        }
        ParamValue::BoolArray(x) => {
            m.type_ = T::PARAMETER_BOOL_ARRAY as u8;
            m.bool_array_value = x;
        }
        ParamValue::IntegerArray(x) => {
            m.type_ = T::PARAMETER_INTEGER_ARRAY as u8;
            m.integer_array_value = x;
        }
        ParamValue::DoubleArray(x) => {
            m.type_ = T::PARAMETER_DOUBLE_ARRAY as u8;
            m.double_array_value = x;
        }
        ParamValue::StringArray(x) => {
            m.type_ = T::PARAMETER_STRING_ARRAY as u8;
            m.string_array_value = x;
        }
    }
    m
}
