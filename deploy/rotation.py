#!/usr/bin/env python3
"""Take one EC2 instance of its Auto Scaling group out of the load balancer's rotation, and put it back.

    rotation.py out [--instance-id ID]    # Standby, deregistered from every target group, drained
    rotation.py in  [--instance-id ID]    # InService, registered, healthy in every target group

Used by deploy.yml around the per-instance rollout (deploy/rollout-instance.sh with ROLLOUT_ROTATION=none),
one instance at a time; with ROLLOUT_ROTATION=aws an instance may run it for itself (no --instance-id: the
id comes from the instance metadata, IMDSv2). Credentials and region are boto3's usual ones.

Why Auto Scaling standby (and not target deregistration alone): a Standby instance is left alone by the
group. Its failing health checks while its containers are recreated do not get it replaced, scale-in does not
pick it, an instance refresh does not terminate it. Deregistration alone leaves the instance InService and
exposed to all three. `out` also deregisters the instance from the group's target groups itself (what the
group does on standby; idempotent) and waits until every one reports it `unused`, after the deregistration
delay, so the connections it still had are done. `in` leaves standby, registers again and waits until the
load balancer reports the target `healthy`, i.e. sends it new connections again.

The group's minimum: standby with ShouldDecrementDesiredCapacity is refused when the desired capacity is at
the minimum, and standby without it makes the group launch a replacement (a full boot, and one instance too
many once this one is back). So at the minimum `out` lowers MinSize by one for the time the instance is out,
records the original minimum in the group tag `rotation:restore-min-size`, and `in` restores it (also on a
rerun after a failed deploy: the tag survives). `out` refuses to take out the group's last InService
instance, and a second instance while one is still out (one at a time).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

MIN_TAG = "rotation:restore-min-size"
IMDS = "http://169.254.169.254/latest"


class RotationError(Exception):
    """A refusal or a wait that did not finish: reported on stderr, exit status 1."""


def log(message: str) -> None:
    print(f"rotation: {message}", file=sys.stderr, flush=True)


def own_instance_id() -> str:
    """This EC2 instance's id, from the instance metadata service (IMDSv2)."""
    token_request = urllib.request.Request(  # noqa: S310 (fixed link-local URL)
        f"{IMDS}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(token_request, timeout=5) as response:  # noqa: S310
        token = response.read().decode()
    id_request = urllib.request.Request(f"{IMDS}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})  # noqa: S310
    with urllib.request.urlopen(id_request, timeout=5) as response:  # noqa: S310
        return response.read().decode()


class Rotation:
    def __init__(self, instance_id: str, timeout_s: float, poll_s: float) -> None:
        self.instance_id = instance_id
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.autoscaling = boto3.client("autoscaling")
        self.elbv2 = boto3.client("elbv2")
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"]
        if not found:
            raise RotationError(f"{instance_id} is not in an Auto Scaling group")
        self.group_name = found[0]["AutoScalingGroupName"]

    # --- what the group and the target groups say -----------------------------------------------------------

    def group(self) -> dict[str, Any]:
        (group,) = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name])[
            "AutoScalingGroups"
        ]
        return group

    def lifecycle_state(self, group: dict[str, Any] | None = None) -> str:
        group = group or self.group()
        states = [i["LifecycleState"] for i in group["Instances"] if i["InstanceId"] == self.instance_id]
        if not states:
            raise RotationError(f"{self.instance_id} left group {self.group_name}")
        return states[0]

    def target_states(self) -> dict[str, str]:
        """Target group ARN -> this instance's state there (healthy, draining, unused, ...)."""
        states = {}
        for arn in self.group()["TargetGroupARNs"]:
            descriptions = self.elbv2.describe_target_health(TargetGroupArn=arn, Targets=[{"Id": self.instance_id}])
            found = [d["TargetHealth"]["State"] for d in descriptions["TargetHealthDescriptions"]]
            states[arn] = found[0] if found else "unused"
        return states

    def wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise RotationError(f"{self.instance_id}: not {what} after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)
        log(f"{self.instance_id}: {what}")

    # --- out / in -----------------------------------------------------------------------------------------

    def out(self) -> None:
        group = self.group()
        state = self.lifecycle_state(group)
        if state == "InService":
            self._enter_standby(group)
        elif state not in ("EnteringStandby", "Standby"):
            raise RotationError(f"{self.instance_id} is {state}, not InService: not taking it out")
        self.wait("in Standby", lambda: self.lifecycle_state() == "Standby")
        for arn, target_state in self.target_states().items():
            if target_state != "unused":  # registered (DeregisterTargets refuses a target that is not)
                self.elbv2.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": self.instance_id}])
        self.wait(
            "deregistered from every target group (drained)",
            lambda: all(s == "unused" for s in self.target_states().values()),
        )

    def _enter_standby(self, group: dict[str, Any]) -> None:
        others = [i for i in group["Instances"] if i["InstanceId"] != self.instance_id]
        away = [i["InstanceId"] for i in others if i["LifecycleState"] in ("EnteringStandby", "Standby")]
        if away:
            raise RotationError(f"{', '.join(away)} already out of rotation: put it back first (one at a time)")
        if not any(i["LifecycleState"] == "InService" for i in others):
            raise RotationError(f"{self.instance_id} is the only instance in service: taking it out stops the service")
        minimum, desired = group["MinSize"], group["DesiredCapacity"]
        if desired - 1 < minimum:
            # Standby with decrement is refused at the minimum; lower it while this instance is out. A tag left
            # by an unfinished rotation already holds the original minimum: keep it.
            if MIN_TAG not in {t["Key"] for t in group.get("Tags", [])}:
                self.autoscaling.create_or_update_tags(Tags=[self._min_tag(str(minimum))])
            self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name, MinSize=minimum - 1)
            log(f"{self.group_name}: MinSize {minimum} -> {minimum - 1} while {self.instance_id} is out")
        self.autoscaling.enter_standby(
            AutoScalingGroupName=self.group_name, InstanceIds=[self.instance_id], ShouldDecrementDesiredCapacity=True
        )
        log(f"{self.instance_id}: entering Standby (desired capacity {desired} -> {desired - 1})")

    def back_in(self) -> None:
        state = self.lifecycle_state()
        if state == "Standby":
            self.autoscaling.exit_standby(AutoScalingGroupName=self.group_name, InstanceIds=[self.instance_id])
            log(f"{self.instance_id}: leaving Standby")
        elif state not in ("Pending", "Pending:Wait", "Pending:Proceed", "InService"):
            raise RotationError(f"{self.instance_id} is {state}: cannot put it back in service")
        self.wait("InService", lambda: self.lifecycle_state() == "InService")
        group = self.group()
        for arn in group["TargetGroupARNs"]:
            self.elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": self.instance_id}])
        self.wait("healthy in every target group", lambda: all(s == "healthy" for s in self.target_states().values()))
        restore = {t["Key"]: t["Value"] for t in group.get("Tags", [])}.get(MIN_TAG)
        if restore is not None:
            self.autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name, MinSize=int(restore))
            self.autoscaling.delete_tags(Tags=[self._min_tag(restore)])
            log(f"{self.group_name}: MinSize back to {restore}")

    def _min_tag(self, value: str) -> dict[str, Any]:
        return {
            "ResourceId": self.group_name,
            "ResourceType": "auto-scaling-group",
            "Key": MIN_TAG,
            "Value": value,
            "PropagateAtLaunch": False,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["out", "in"])
    parser.add_argument("--instance-id", help="default: this instance (instance metadata)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each wait (default 900)")
    parser.add_argument("--poll", type=float, default=5, help="seconds between checks (default 5)")
    args = parser.parse_args(argv)
    try:
        rotation = Rotation(args.instance_id or own_instance_id(), args.timeout, args.poll)
        if args.action == "out":
            rotation.out()
        else:
            rotation.back_in()
    except (RotationError, ClientError, BotoCoreError, OSError) as exc:
        log(f"{args.action} failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
