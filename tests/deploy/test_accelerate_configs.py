"""deploy/accelerate/*.yaml: accelerate's own config loader and launch validation accept each file, and
each turns into the torchrun environment its name promises."""

from __future__ import annotations

import warnings

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from ._util import DEPLOY, yaml_docs

CONFIGS = DEPLOY / "accelerate"
EXPECTED = {
    "single_gpu.yaml": "NO",
    "ddp.yaml": "MULTI_GPU",
    "fsdp2.yaml": "FSDP",
    "zero3.yaml": "DEEPSPEED",
    "multi_node.yaml": "FSDP",
}


def test_the_expected_configs_and_no_others():
    assert sorted(p.name for p in CONFIGS.glob("*.y*ml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_accelerates_config_class(name):
    cfg = load_config_from_file(str(CONFIGS / name))  # raises on keys ClusterConfig does not have
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == EXPECTED[name]
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.mixed_precision == "bf16"
    assert cfg.num_processes >= 1 and cfg.num_processes % cfg.num_machines == 0


@pytest.mark.parametrize("name", ["fsdp2.yaml", "multi_node.yaml"])
def test_fsdp_configs_are_fsdp2(name):
    fsdp = load_config_from_file(str(CONFIGS / name)).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2 wants a bool, not FULL_SHARD
    # FSDP1-only keys are obsolete (or errors) under FSDP2.
    assert not {"fsdp_sharding_strategy", "fsdp_backward_prefetch", "fsdp_use_orig_params",
                "fsdp_forward_prefetch"} & set(fsdp)
    # Off on purpose: the frozen reference model is not passed through accelerator.prepare().
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False


def test_zero3_config():
    ds = load_config_from_file(str(CONFIGS / "zero3.yaml")).deepspeed_config
    assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True
    # Left to the job spec (they stay "auto" and follow the Accelerator): no silent mismatch.
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds


def test_multi_node_config():
    cfg = load_config_from_file(str(CONFIGS / "multi_node.yaml"))
    assert cfg.num_machines > 1 and cfg.rdzv_backend == "static" and cfg.main_process_port == 29500


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_nested_key_is_a_launch_option(name):
    """accelerate copies fsdp_config/deepspeed_config keys onto launch args unchecked: a typo is silently ignored."""
    known = set(vars(launch_command_parser().parse_args(["script.py"])))
    (raw,) = yaml_docs(CONFIGS / name)
    for key in raw.get("fsdp_config", {}):
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in known, key
    for key in raw.get("deepspeed_config", {}):
        assert key in known, key


def _launch_args(name: str, *flags: str):
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / name), *flags,
                              "--no_python", "hdpo-tune", "run", "/work/job.yaml"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args, _, _ = _validate_launch_command(args)
    return args


def test_single_gpu_launches_one_plain_process():
    args = _launch_args("single_gpu.yaml")
    assert not (args.multi_gpu or args.use_fsdp or args.use_deepspeed)
    assert args.num_processes == 1 and args.gpu_ids == "0"


def test_ddp_launches_torchrun_per_gpu():
    args = _launch_args("ddp.yaml", "--num_processes", "4", "--main_process_port", "0")
    assert args.multi_gpu and not args.use_fsdp
    env = prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "4" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_USE_FSDP" not in env


def test_fsdp2_launch_environment():
    args = _launch_args("fsdp2.yaml", "--num_processes", "2", "--main_process_port", "0")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert args.nproc_per_node == "2"
    assert args.no_python and args.training_script == "hdpo-tune"
    assert args.training_script_args == ["run", "/work/job.yaml"]


def test_zero3_launch_environment():
    args = _launch_args("zero3.yaml", "--num_processes", "2", "--main_process_port", "0")
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(
        load_config_from_file(str(CONFIGS / "zero3.yaml")).deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
