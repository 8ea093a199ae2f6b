"""ros2 launch pi0_mps pi0.launch.py [params_file:=...] [encoder_pct:=70] [prompt:="..."] ...

Starts the pi0 node with config/pi0.yaml (or params_file) and the common overrides below;
an override left empty keeps the params file's value. Remap the inputs with e.g.
`camera:=/camera/color/image_raw joint_states:=/robot/joint_states`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# (name, type, description) of the overrides offered as launch arguments.
OVERRIDES = [
    ("encoder_pct", int, "Percent of SMs for the encoder stream (1..100)"),
    ("decoder_pct", int, "Percent of SMs for the decoder stream (1..100)"),
    ("concurrent", bool, "Encoder at camera rate, decoder at control rate (true/false)"),
    ("partition", str, "SM partition backend: green, mps, none"),
    ("backend", str, "Compute backend: auto, cuda, cpu"),
    ("prompt", str, "Task instruction"),
    ("checkpoint", str, "pi0 checkpoint directory (empty: built-in random tiny model)"),
    ("norm_stats", str, "norm_stats.json (empty: from the checkpoint)"),
    ("control_rate_hz", float, "Control rate (trajectory point spacing)"),
    ("seed", int, "Noise seed"),
]


def _node(context):
    overrides = {}
    for name, typ, _ in OVERRIDES:
        text = LaunchConfiguration(name).perform(context)
        if text == "":
            continue
        if typ is bool:
            overrides[name] = text.lower() in ("1", "true", "yes", "on")
        else:
            overrides[name] = typ(text)
    params = [LaunchConfiguration("params_file")]
    if overrides:
        params.append(overrides)
    return [Node(
        package="pi0_mps",
        executable="pi0",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=params,
        remappings=[
            ("camera/image_raw", LaunchConfiguration("camera")),
            ("joint_states", LaunchConfiguration("joint_states")),
        ],
    )]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("pi0_mps"), "config", "pi0.yaml"])
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameters file of the node"),
        DeclareLaunchArgument("node_name", default_value="pi0"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("camera", default_value="camera/image_raw",
                              description="Topic of the first camera (default camera_topics)"),
        DeclareLaunchArgument("joint_states", default_value="joint_states",
                              description="JointState topic"),
    ]
    args += [DeclareLaunchArgument(n, default_value="", description=d) for n, _, d in OVERRIDES]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
