"""Alerts: the encrypted SNS topic and the EventBridge rule that reports every
unsuccessful execution once (FAILED, TIMED_OUT, ABORTED), through the alert function
(pipeline/alerts.py), which gathers the failed state, tables and re-run input from the
execution's history.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from pipeline.alerts import DETAIL_TYPE, UNSUCCESSFUL
from stacks.config import PipelineConfig


class Alerts(Construct):
    """The alert topic, encrypted with a customer-managed key CloudWatch alarms may use."""

    def __init__(self, scope: Construct, construct_id: str, *, config: PipelineConfig) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description=f"{config.prefix} alert topic encryption",
            enable_key_rotation=True,
        )
        # CloudWatch alarms publish as the service; the AWS-managed SNS key would refuse them.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            topic_name=f"{config.prefix}-alerts",
            display_name="totesys-etl alerts",
            master_key=self.key,
            enforce_ssl=True,
        )
        if config.alert_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.alert_email))


class AlertRule(Construct):
    """Every unsuccessful end of an execution -> the alert function -> the topic."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        state_machine: sfn.IStateMachine,
        alert_function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self.rule = events.Rule(
            self,
            "ExecutionUnsuccessful",
            rule_name=f"{config.prefix}-execution-unsuccessful",
            description="Alert once for each execution that ends FAILED, TIMED_OUT or ABORTED",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=[DETAIL_TYPE],
                detail={
                    "status": list(UNSUCCESSFUL),
                    "stateMachineArn": [state_machine.state_machine_arn],
                },
            ),
            targets=[
                targets.LambdaFunction(
                    alert_function,
                    # EventBridge retries a failed delivery; the function's own async
                    # retries and on-failure destination cover a failed publish.
                    retry_attempts=8,
                    max_event_age=Duration.hours(6),
                )
            ],
        )
