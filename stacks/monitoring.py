"""Visibility: alarms and a CloudWatch dashboard (the alert topic is in stacks/alerting.py).

One failure, one alert: what fails an execution is reported by the alert rule
(stacks/alerting.py), so no alarm here notifies for execution failures, timeouts or the
step Lambdas' errors and throttles (those are retried, and when retries run out the
execution fails). Those alarms stay for the dashboard, without actions. Only
`DataFreshness` notifies: no success for hours is a condition of its own (a schedule
left disabled, or runs failing all day), and it notifies again when it clears.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from stacks.config import PipelineConfig
from stacks.functions import METRICS_NAMESPACE

ROWS_EXTRACTED = "RowsExtracted"
ROWS_LOADED = "RowsLoaded"
ROWS_QUARANTINED = "RowsQuarantined"


class Monitoring(Construct):
    """Alarms on failures, timeouts, errors, throttles and data freshness; one dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: PipelineConfig,
        topic: sns.ITopic,
        state_machine: sfn.StateMachine,
        functions: tuple[lambda_.IFunction, ...],
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.action = cw_actions.SnsAction(topic)
        self.alarms: list[cw.Alarm] = []
        five = Duration.minutes(5)
        self._alarm(
            "ExecutionsFailed",
            state_machine.metric_failed(period=five, statistic="Sum"),
            "A pipeline execution failed (the alert rule has reported it once).",
        )
        self._alarm(
            "ExecutionsTimedOut",
            state_machine.metric_timed_out(period=five, statistic="Sum"),
            "A pipeline execution hit the state machine timeout (reported by the alert rule).",
        )
        for fn, step in zip(functions, ("Extract", "Transform", "Load"), strict=True):
            self._alarm(
                f"{step}Errors",
                fn.metric_errors(period=Duration.minutes(30), statistic="Sum"),
                f"The {step.lower()} Lambda failed 3+ times in 30 minutes (retries included; "
                "a failure that outlasted them is reported by the alert rule).",
                threshold=3,
            )
            self._alarm(
                f"{step}Throttles",
                fn.metric_throttles(period=Duration.minutes(30), statistic="Sum"),
                f"The {step.lower()} Lambda was throttled: check the account concurrency.",
                threshold=1,
            )
        hours = config.freshness_hours
        self.freshness = self._alarm(
            "DataFreshness",
            state_machine.metric_succeeded(period=Duration.hours(hours), statistic="Sum"),
            f"No successful pipeline execution for {hours} hours: the warehouse is going stale.",
            threshold=1,
            comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            missing=cw.TreatMissingData.BREACHING,
            notify=True,
        )
        self.freshness.add_ok_action(self.action)
        self.dashboard = self._dashboard(state_machine, functions)

    def _alarm(
        self,
        name: str,
        metric: cw.Metric,
        description: str,
        *,
        threshold: float = 1,
        comparison: cw.ComparisonOperator = (
            cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        ),
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
        notify: bool = False,
    ) -> cw.Alarm:
        alarm = metric.create_alarm(
            self,
            name,
            alarm_name=f"{self.config.prefix}-{name}",
            alarm_description=description,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=comparison,
            treat_missing_data=missing,
        )
        if notify:
            alarm.add_alarm_action(self.action)
        self.alarms.append(alarm)
        return alarm

    def _dashboard(
        self, state_machine: sfn.StateMachine, functions: tuple[lambda_.IFunction, ...]
    ) -> cw.Dashboard:
        period = Duration.minutes(30)

        def per_table(metric_name: str, label: str) -> cw.GraphWidget:
            search = (
                f"SEARCH('{{{METRICS_NAMESPACE},service,table}} "
                f"MetricName=\"{metric_name}\"', 'Sum', {int(period.to_seconds())})"
            )
            return cw.GraphWidget(
                title=label,
                left=[cw.MathExpression(expression=search, label="", period=period)],
                width=8,
                stacked=True,
            )

        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=self.config.prefix)
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Executions",
                left=[
                    state_machine.metric_started(period=period),
                    state_machine.metric_succeeded(period=period),
                    state_machine.metric_failed(period=period),
                    state_machine.metric_timed_out(period=period),
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="Execution time",
                left=[
                    state_machine.metric_time(period=period, statistic="Average"),
                    state_machine.metric_time(period=period, statistic="Maximum"),
                ],
                width=12,
            ),
        )
        dashboard.add_widgets(
            per_table(ROWS_EXTRACTED, "Rows extracted per source table"),
            per_table(ROWS_LOADED, "Rows loaded per warehouse table"),
            per_table(ROWS_QUARANTINED, "Rows quarantined per source table"),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Step duration (max)",
                left=[fn.metric_duration(period=period, statistic="Maximum") for fn in functions],
                width=8,
            ),
            cw.GraphWidget(
                title="Step errors",
                left=[fn.metric_errors(period=period) for fn in functions],
                width=8,
            ),
            cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=8),
        )
        return dashboard
