//! What this router answers to other routers' operations (besides
//! forwarded API calls): a live move's target side (`move.*`,
//! `manager/moves.rs`) and the mirrors it holds (`dtl.*`,
//! `manager/mirror.rs`).

use super::Manager;

impl crate::cluster::peer::Ops for Manager {
    fn run(
        &self,
        from: &str,
        op: &str,
        msg: serde_json::Value,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        if op.starts_with("dtl.") {
            return self.dtl_op(from, op, msg, body);
        }
        fn arg<T: serde::de::DeserializeOwned>(msg: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(msg).map_err(|e| format!("bad request: {e}"))
        }
        let done = match op {
            "move.prepare" => self.move_prepare(arg(msg)?),
            "move.file" => self.move_file(arg(msg)?, body),
            "move.precopied" => {
                let applied = self.move_precopied(arg(msg)?).map_err(|e| e.to_string())?;
                return serde_json::to_value(applied).map_err(|e| e.to_string());
            }
            "move.stage" => self.move_stage(arg(msg)?),
            "move.commit" => self.move_commit(arg(msg)?),
            "move.abort" => {
                self.move_abort(arg(msg)?);
                Ok(())
            }
            other => return Err(format!("unknown operation {other:?}")),
        };
        done.map(|()| serde_json::Value::Null)
            .map_err(|e| e.to_string())
    }
}
