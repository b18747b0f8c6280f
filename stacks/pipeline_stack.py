"""The one stack: data lake, step functions, state machine, alerts, schedule, monitoring."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from stacks.alerting import AlertRule, Alerts
from stacks.config import PipelineConfig
from stacks.data_lake import DataLake
from stacks.functions import PipelineFunctions
from stacks.monitoring import Monitoring
from stacks.nag import suppress_findings
from stacks.schedule import PipelineSchedule
from stacks.workflow import PipelineWorkflow


class TotesysEtlStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: PipelineConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        Tags.of(self).add("project", config.prefix)
        self.config = config
        self.lake = DataLake(self, "Lake", retention_days=config.retention_days)
        self.alerts = Alerts(self, "Alerts", config=config)
        self.functions = PipelineFunctions(
            self, "Functions", config=config, lake=self.lake, alerts=self.alerts
        )
        self.workflow = PipelineWorkflow(self, "Workflow", config=config, functions=self.functions)
        self.alert_rule = AlertRule(
            self,
            "AlertRule",
            config=config,
            state_machine=self.workflow.state_machine,
            alert_function=self.functions.alert,
        )
        self.schedule = PipelineSchedule(
            self, "Schedule", config=config, state_machine=self.workflow.state_machine
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            config=config,
            topic=self.alerts.topic,
            state_machine=self.workflow.state_machine,
            functions=self.functions.all,
        )
        CfnOutput(self, "StateMachineArn", value=self.workflow.state_machine.state_machine_arn)
        CfnOutput(self, "IngestionBucket", value=self.lake.ingestion.bucket_name)
        CfnOutput(self, "ProcessedBucket", value=self.lake.processed.bucket_name)
        CfnOutput(self, "AlertTopicArn", value=self.alerts.topic.topic_arn)
        suppress_findings(self)
