//! L2 access-policy windows over the encoder's weights (study knob `PI0_ENC_WINDOW=1`).
//!
//! The encoder reads ~4 GB of weights once per frame through cuBLASLt, which takes no cache
//! hints: those dead lines displace what is reread a few µs later (its own MLP intermediates,
//! and beside it the decoder's partials and prefix K/V). A streaming window on the stream,
//! set to each weight GEMM's weights before its launch, marks those lines evict-first, the
//! way the decoder's own weight stream is marked (docs/gpu-notes.md v19).

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use super::device::drv;
use crate::error::{Error, Result};

fn cu(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Gpu(format!("{what}: {r:?}")))
    }
}

/// The largest window the device takes when `PI0_ENC_WINDOW=1` asks for the encoder's weight
/// windows; None otherwise.
pub(crate) fn encoder_weight_windows(ctx: &Arc<CudaContext>) -> Result<Option<usize>> {
    if std::env::var("PI0_ENC_WINDOW").map_or(true, |v| v != "1") {
        return Ok(None);
    }
    let max = drv(
        ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE),
        "max access policy window",
    )? as usize;
    Ok((max > 0).then_some(max))
}

/// Sets (bytes > 0) or clears (bytes = 0) the access-policy window of `stream`.
pub(crate) fn set_window(
    stream: sys::CUstream,
    base: u64,
    bytes: usize,
    prop: sys::CUaccessProperty,
) -> Result<()> {
    // SAFETY: zeroed is a valid bit pattern for this plain-data union.
    let mut v: sys::CUstreamAttrValue = unsafe { std::mem::zeroed() };
    v.accessPolicyWindow = sys::CUaccessPolicyWindow {
        base_ptr: base as *mut std::ffi::c_void,
        num_bytes: bytes,
        hitRatio: 1.0,
        hitProp: prop,
        missProp: prop,
    };
    // SAFETY: the stream is alive; the value is copied by the driver.
    cu(
        unsafe {
            sys::cuStreamSetAttribute(
                stream,
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                &v,
            )
        },
        "cuStreamSetAttribute(access policy window)",
    )
}

/// (kernel nodes of `graph` that carry a window, all kernel nodes): whether the stream's
/// window reached the captured kernels.
pub(crate) fn window_nodes(graph: sys::CUgraph) -> Result<(usize, usize)> {
    let mut n = 0usize;
    // SAFETY: size query, then a buffer of that size.
    cu(
        unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) },
        "cuGraphGetNodes",
    )?;
    let mut nodes = vec![std::ptr::null_mut(); n];
    cu(
        unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut n) },
        "cuGraphGetNodes",
    )?;
    let (mut with, mut kernels) = (0, 0);
    for &node in &nodes[..n] {
        let mut t = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        cu(
            unsafe { sys::cuGraphNodeGetType(node, &mut t) },
            "cuGraphNodeGetType",
        )?;
        if t != sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
            continue;
        }
        kernels += 1;
        // SAFETY: as above.
        let mut v: sys::CUkernelNodeAttrValue = unsafe { std::mem::zeroed() };
        cu(
            unsafe {
                sys::cuGraphKernelNodeGetAttribute(
                    node,
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
                    &mut v,
                )
            },
            "cuGraphKernelNodeGetAttribute",
        )?;
        // SAFETY: the attribute asked for is the window.
        if unsafe { v.accessPolicyWindow.num_bytes } > 0 {
            with += 1;
        }
    }
    Ok((with, kernels))
}

/// With `PI0_ENC_WINDOW=1`: says on stderr how many kernel nodes of a captured graph carry a
/// window (whether stream attributes reach captured kernels at all).
pub(crate) fn report(graph: sys::CUgraph, what: &str) {
    if std::env::var("PI0_ENC_WINDOW").map_or(true, |v| v != "1") {
        return;
    }
    match window_nodes(graph) {
        Ok((with, all)) => {
            eprintln!("enc window: {what} graph: {with} of {all} kernel nodes carry a window")
        }
        Err(e) => eprintln!("enc window: {what} graph: {e}"),
    }
}
