//! One instantiated CUDA graph: captured on a stream, launched or uploaded on any stream of the
//! same device. The engine's `forward` graphs and the partition pipeline's stage graphs are both
//! this type; a graph keeps the SMs of the context it was captured in.

use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph, CudaStream};

use super::device::cu;
use crate::{Error, Result};

pub struct Graph {
    graph: CudaGraph,
}

// SAFETY: a CudaGraph is not internally synchronised; every owner launches a graph from one
// thread at a time (the engine keeps its graphs in a Mutex, the pipeline launches each one under
// the mutex of its stage).
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

impl Graph {
    /// Captures what `body` enqueues on `stream` and instantiates it with `flags`. Not uploaded.
    pub fn capture(
        stream: &Arc<CudaStream>,
        flags: sys::CUgraphInstantiate_flags,
        body: impl FnOnce() -> Result<()>,
    ) -> Result<Graph> {
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::Gpu(format!("begin capture: {e}")))?;
        let res = body();
        // Capture is ended even when `body` failed, so the stream is usable again.
        let end = stream.end_capture(flags);
        res?;
        let graph = end
            .map_err(|e| Error::Gpu(format!("end capture / instantiate: {e}")))?
            .ok_or_else(|| Error::Gpu("captured an empty graph".into()))?;
        Ok(Graph { graph })
    }
    /// Launches on the stream it was captured on.
    pub fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| Error::Gpu(format!("graph launch: {e}")))
    }
    /// Launches on `stream` (the graph keeps the SMs of the context it was captured in).
    pub fn launch_on(&self, stream: &Arc<CudaStream>) -> Result<()> {
        // SAFETY: a valid exec and a stream of the same device.
        self.on_stream(stream, "cuGraphLaunch", |g, s| unsafe {
            sys::cuGraphLaunch(g, s)
        })
    }
    /// Uploads on the stream it was captured on.
    pub fn upload(&self) -> Result<()> {
        self.graph
            .upload()
            .map_err(|e| Error::Gpu(format!("graph upload: {e}")))
    }
    /// Uploads on `stream` (ordered behind the work already queued there).
    pub fn upload_on(&self, stream: &Arc<CudaStream>) -> Result<()> {
        // SAFETY: a valid exec and a stream of the same device.
        self.on_stream(stream, "cuGraphUpload", |g, s| unsafe {
            sys::cuGraphUpload(g, s)
        })
    }
    /// Runs the driver call `f` on this graph and `stream`, with `stream`'s context bound.
    fn on_stream(
        &self,
        stream: &Arc<CudaStream>,
        what: &str,
        f: impl FnOnce(sys::CUgraphExec, sys::CUstream) -> sys::CUresult,
    ) -> Result<()> {
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("bind context: {e}")))?;
        cu(f(self.graph.cu_graph_exec(), stream.cu_stream()), what)
    }
}
