//! `pi0-offline REQUEST.json`: runs the node's pipeline (`pipeline::PolicyRunner`, the same
//! settings, pre-processing, noise seeds) on observations given in a JSON file and prints the
//! action chunks as JSON. The ROS integration tests compare the node's output with it.
//!
//! Request: `{"settings": {"<param>": value, ...},
//!            "observations": [{"images": [{"width", "height", "encoding", "step", "data": [u8...]}
//!                                         | null, ...one per camera...],
//!                              "joint_names": [...], "positions": [...],
//!                              "prompt": "...", "stamp_ns": 0, "index": 0}]}`
//! Reply (stdout): `[{"index", "seed", "joint_names", "points": [[...], ...]}, ...]`.

use std::process::ExitCode;

use pi0_mps::pipeline::runner::OwnedImage;
use pi0_mps::pipeline::settings::{NodeSettings, ParamValue};
use pi0_mps::pipeline::PolicyRunner;
use serde_json::{json, Value};

fn param(v: &Value) -> Result<ParamValue, String> {
    Ok(match v {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::Number(n) if n.is_i64() => ParamValue::Integer(n.as_i64().unwrap()),
        Value::Number(n) => ParamValue::Double(n.as_f64().unwrap()),
        Value::String(s) => ParamValue::String(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            ParamValue::StringArray(a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        }
        Value::Array(a) if a.iter().all(Value::is_i64) => {
            ParamValue::IntegerArray(a.iter().map(|x| x.as_i64().unwrap()).collect())
        }
        other => return Err(format!("unsupported parameter value {other}")),
    })
}

fn image(v: &Value) -> Result<Option<OwnedImage>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let n = |k: &str| {
        v[k].as_u64()
            .map(|x| x as usize)
            .ok_or(format!("image.{k} missing"))
    };
    let data = v["data"]
        .as_array()
        .ok_or("image.data missing")?
        .iter()
        .map(|x| x.as_u64().map(|b| b as u8).ok_or("image.data: not bytes"))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(Some(OwnedImage {
        width: n("width")?,
        height: n("height")?,
        encoding: v["encoding"]
            .as_str()
            .ok_or("image.encoding missing")?
            .into(),
        step: n("step")?,
        data,
    }))
}

fn run(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let req: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut settings = NodeSettings::default();
    if let Some(m) = req["settings"].as_object() {
        for (k, v) in m {
            settings
                .set(k, &param(v)?)
                .map_err(|e| format!("{k}: {e}"))?;
        }
    }
    settings.validate()?;
    let runner = PolicyRunner::from_settings(&settings).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for obs in req["observations"].as_array().ok_or("no observations")? {
        let images = obs["images"]
            .as_array()
            .ok_or("observation.images missing")?
            .iter()
            .map(image)
            .collect::<Result<Vec<_>, _>>()?;
        let raws: Vec<_> = images
            .iter()
            .map(|i| i.as_ref().map(|i| i.as_raw()))
            .collect();
        let names: Vec<String> = serde_json::from_value(obs["joint_names"].clone())
            .map_err(|e| format!("joint_names: {e}"))?;
        let positions: Vec<f64> = serde_json::from_value(obs["positions"].clone())
            .map_err(|e| format!("positions: {e}"))?;
        let prompt = obs["prompt"].as_str().unwrap_or(&settings.prompt);
        let stamp = obs["stamp_ns"].as_i64().unwrap_or(0);
        let index = obs["index"].as_u64().unwrap_or(0);
        let c = runner
            .infer_raw(&raws, &names, &positions, prompt, stamp, index)
            .map_err(|e| e.to_string())?;
        out.push(
            json!({"index": c.index, "seed": c.seed, "joint_names": c.joint_names,
                        "points": c.points, "masked_slots": c.masked_slots}),
        );
    }
    Ok(Value::Array(out))
}

fn main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: pi0-offline REQUEST.json (see the source for the format)");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pi0-offline: {e}");
            ExitCode::FAILURE
        }
    }
}
