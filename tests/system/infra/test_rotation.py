"""deploy/rotation.py, the real CLI, against a moto server: Auto Scaling standby, target (de)registration and the
group's minimum. What moto does not model (real deregistration delays, target health transitions, AWS refusing
standby with decrement at the minimum) is named in infra/README.md."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from modelserver.paths import REPO_ROOT

REPO = REPO_ROOT
ROTATION = REPO / "deploy" / "rotation.py"
MIN_TAG = "rotation:restore-min-size"
NAMES = itertools.count()


@pytest.fixture(scope="module")
def aws(tf_env: dict[str, str], moto_url: str) -> dict[str, Any]:
    """boto3 clients on moto, the environment the CLI runs with, and a VPC with a subnet and a launch template."""
    env = dict(tf_env, AWS_ENDPOINT_URL=moto_url)
    session = boto3.Session(region_name=env["AWS_REGION"], aws_access_key_id="testing", aws_secret_access_key="testing")
    ec2 = session.client("ec2", endpoint_url=moto_url)
    vpc = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.50.1.0/24")["Subnet"]["SubnetId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName="rotation-test", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"}
    )
    return {
        "env": env,
        "vpc": vpc,
        "subnet": subnet,
        "autoscaling": session.client("autoscaling", endpoint_url=moto_url),
        "elbv2": session.client("elbv2", endpoint_url=moto_url),
    }


@pytest.fixture
def make_group(aws: dict[str, Any]) -> Callable[[int, int], tuple[str, str]]:
    """A new group (min, desired; max 4) attached to a new TCP target group: (group name, target group ARN)."""

    def make(minimum: int, desired: int) -> tuple[str, str]:
        n = next(NAMES)
        tg = aws["elbv2"].create_target_group(
            Name=f"rotation-{n}", Protocol="TCP", Port=8000, VpcId=aws["vpc"], TargetType="instance"
        )["TargetGroups"][0]["TargetGroupArn"]
        name = f"rotation-{n}"
        aws["autoscaling"].create_auto_scaling_group(
            AutoScalingGroupName=name,
            MinSize=minimum,
            MaxSize=4,
            DesiredCapacity=desired,
            LaunchTemplate={"LaunchTemplateName": "rotation-test", "Version": "$Latest"},
            VPCZoneIdentifier=aws["subnet"],
            TargetGroupARNs=[tg],
        )
        return name, tg

    return make


def rotation(aws: dict[str, Any], action: str, instance_id: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROTATION), action, "--instance-id", instance_id, "--timeout", "30", "--poll", "0.2"]
    return subprocess.run(cmd, env=aws["env"], capture_output=True, text=True, timeout=120, check=False)


def group(aws: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = aws["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return found


def states(aws: dict[str, Any], name: str) -> dict[str, str]:
    return {i["InstanceId"]: i["LifecycleState"] for i in group(aws, name)["Instances"]}


def target_health(aws: dict[str, Any], tg: str, instance_id: str) -> str:
    (found,) = aws["elbv2"].describe_target_health(TargetGroupArn=tg, Targets=[{"Id": instance_id}])[
        "TargetHealthDescriptions"
    ]
    return found["TargetHealth"]["State"]


def tags(aws: dict[str, Any], name: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in group(aws, name).get("Tags", [])}


def test_at_the_minimum_out_lowers_it_and_in_restores_it(aws: dict[str, Any], make_group: Callable) -> None:
    name, tg = make_group(2, 2)
    first, second = sorted(states(aws, name))
    assert target_health(aws, tg, first) == "healthy"

    done = rotation(aws, "out", first)
    assert done.returncode == 0, done.stderr
    assert states(aws, name) == {first: "Standby", second: "InService"}, "no replacement launched"
    assert target_health(aws, tg, first) == "unused"
    assert target_health(aws, tg, second) == "healthy"
    found = group(aws, name)
    assert (found["MinSize"], found["DesiredCapacity"]) == (1, 1)
    assert tags(aws, name)[MIN_TAG] == "2", "the original minimum is kept on the group for `in`"

    # One at a time: a second instance is not taken out while the first one is.
    refused = rotation(aws, "out", second)
    assert refused.returncode == 1
    assert "one at a time" in refused.stderr
    assert states(aws, name)[second] == "InService"

    done = rotation(aws, "in", first)
    assert done.returncode == 0, done.stderr
    assert states(aws, name) == {first: "InService", second: "InService"}
    assert target_health(aws, tg, first) == "healthy"
    found = group(aws, name)
    assert (found["MinSize"], found["DesiredCapacity"]) == (2, 2)
    assert MIN_TAG not in tags(aws, name)


def test_above_the_minimum_only_the_desired_capacity_moves(aws: dict[str, Any], make_group: Callable) -> None:
    name, tg = make_group(2, 3)
    instance = sorted(states(aws, name))[0]
    done = rotation(aws, "out", instance)
    assert done.returncode == 0, done.stderr
    found = group(aws, name)
    assert (found["MinSize"], found["DesiredCapacity"], len(found["Instances"])) == (2, 2, 3)
    assert MIN_TAG not in tags(aws, name)
    assert target_health(aws, tg, instance) == "unused"
    # `out` again is a no-op that still waits for the deregistration: a rerun of a deploy step is safe.
    again = rotation(aws, "out", instance)
    assert again.returncode == 0, again.stderr

    done = rotation(aws, "in", instance)
    assert done.returncode == 0, done.stderr
    found = group(aws, name)
    assert (found["MinSize"], found["DesiredCapacity"]) == (2, 3)
    assert target_health(aws, tg, instance) == "healthy"


def test_the_last_instance_in_service_is_not_taken_out(aws: dict[str, Any], make_group: Callable) -> None:
    name, tg = make_group(1, 1)
    (instance,) = states(aws, name)
    refused = rotation(aws, "out", instance)
    assert refused.returncode == 1
    assert "only instance in service" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert states(aws, name) == {instance: "InService"}
    assert target_health(aws, tg, instance) == "healthy"
    assert group(aws, name)["MinSize"] == 1


def test_an_instance_outside_any_group_is_an_error(aws: dict[str, Any]) -> None:
    refused = rotation(aws, "out", "i-0123456789abcdef0")
    assert refused.returncode == 1
    assert "not in an Auto Scaling group" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_in_repairs_a_minimum_left_lowered(aws: dict[str, Any], make_group: Callable) -> None:
    """A deploy that died between lowering MinSize and standby: `in` (the runbook's repair) restores it."""
    name, tg = make_group(2, 2)
    instance = sorted(states(aws, name))[0]
    tag = {"ResourceId": name, "ResourceType": "auto-scaling-group", "Key": MIN_TAG, "Value": "2"}
    aws["autoscaling"].create_or_update_tags(Tags=[{**tag, "PropagateAtLaunch": False}])
    aws["autoscaling"].update_auto_scaling_group(AutoScalingGroupName=name, MinSize=1)
    done = rotation(aws, "in", instance)
    assert done.returncode == 0, done.stderr
    assert group(aws, name)["MinSize"] == 2
    assert MIN_TAG not in tags(aws, name)
    assert target_health(aws, tg, instance) == "healthy"
