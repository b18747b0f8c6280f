"""The EventBridge Scheduler schedule that starts the pipeline every 30 minutes (default).

The target is the universal `sfn:startExecution` target rather than the templated
Step Functions target, because only the universal one can set the execution *name*.
The name is `<aws.scheduler.execution-id>`, which AWS documents as unique per attempted
invocation: a retried start whose first attempt did in fact start an execution can start
a second one under a new name. That is harmless by design (docs/OPERATIONS.md): every
step is idempotent by data and concurrent runs are safe (a transform lease, a load lock).
The scheduled time cannot be the name (it contains `:`, which execution names forbid),
so it travels in the input for the record.
"""

from __future__ import annotations

import json

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from stacks.config import PipelineConfig


class PipelineSchedule(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        state_machine: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        execution_input = json.dumps(
            {"trigger": "schedule", "scheduled_time": scheduler.ContextAttribute.scheduled_time}
        )
        target = targets.Universal(
            service="sfn",
            action="startExecution",
            input=scheduler.ScheduleTargetInput.from_object(
                {
                    "StateMachineArn": state_machine.state_machine_arn,
                    "Name": scheduler.ContextAttribute.execution_id,
                    "Input": execution_input,
                }
            ),
            policy_statements=[
                iam.PolicyStatement(
                    actions=["states:StartExecution"],
                    resources=[state_machine.state_machine_arn],
                )
            ],
            retry_attempts=3,
            # A start older than this is dropped: the next scheduled run covers it.
            max_event_age=Duration.minutes(20),
        )
        self.schedule = scheduler.Schedule(
            self,
            "Schedule",
            schedule_name=f"{config.prefix}-schedule",
            description="Start the totesys-etl pipeline (incremental extract of every table)",
            schedule=scheduler.ScheduleExpression.expression(config.schedule_expression),
            target=target,
            time_window=scheduler.TimeWindow.off(),
            enabled=config.schedule_enabled,
        )
