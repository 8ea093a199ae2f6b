//! The `pi0` executable: the ROS 2 node (built with `--features ros`).

#[cfg(not(feature = "ros"))]
fn main() {
    eprintln!(
        "pi0: this binary was built without ROS support. Build it with `--features ros` in a \
         sourced ROS 2 environment (see README.md, or scripts/run-node.sh)."
    );
    std::process::exit(2);
}

#[cfg(feature = "ros")]
fn main() {
    std::process::exit(pi0_mps::ros::run_node());
}
