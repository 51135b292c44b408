"""Human approval of a promotion, asked only when a run requires it.

Airflow's :class:`~airflow.providers.standard.operators.hitl.ApprovalOperator` always waits for a
person, and on "Reject" skips the tasks after it. Inside a mapped task group (one per market),
a skipped or branched path would need trigger rules that Airflow evaluates across every
market's task instances before the group expands, so one market's failure would stop the
others. :class:`PromotionApproval` therefore always succeeds with an answer that the next task
(``promote_or_keep``) acts on: it asks a person only when the gate passed and the market's
``require_approval`` is set (the run's param, or the market's own in the universe file: the
gate's record carries the market's value), and otherwise answers at once from the gate decision.
A person answers in the UI (Required Actions) or through the REST API; without an answer within
the market's ``approval_timeout_hours``, the answer is Reject (production kept) and the record
says nobody answered.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator


class PromotionApproval(ApprovalOperator):
    """Approval of a gate-passed candidate; an immediate answer when none is needed.

    The gate's XCom (same map index) holds ``{model: decision}`` for the markets of the group's
    instance; a market that requires approval has an instance of its own
    (:func:`include.universe.batch_markets`), so a person is asked about one candidate at most.

    Args:
        gate_task_id: task id of the gate whose decisions are approved.
        **kwargs: passed to :class:`ApprovalOperator` (timeouts, …); the subject and body are
            written from the decision.

    Returns (XCom):
        ``{model: {"chosen_options": ["Approve" | "Reject"], "asked": bool, ...}}``: ``asked``
        is whether a person answered; an unasked answer follows the gate (Approve when it passed).

    Raises:
        AirflowFailException: more than one market of the instance requires approval.
    """

    def __init__(self, *, gate_task_id: str, **kwargs: Any) -> None:
        super().__init__(defaults=[self.REJECT], subject="Promote a candidate?", **kwargs)
        self.gate_task_id = gate_task_id

    def execute(self, context: Any) -> Any:
        from datetime import timedelta

        from airflow.sdk.exceptions import AirflowFailException

        ti = context["ti"]
        decisions = ti.xcom_pull(task_ids=self.gate_task_id, map_indexes=ti.map_index) or {}
        answers, asking = {}, []
        for model, decision in decisions.items():
            # The market's own setting, as the gate recorded it (the universe file may set it per market).
            required = decision.get("require_approval", context["params"].get("require_approval"))
            if decision.get("passed") and required:
                asking.append(model)
                continue
            answer = self.APPROVE if decision.get("passed") else self.REJECT
            self.log.info("%s: no approval needed (gate passed: %s, require_approval: %s): %s", model,
                          bool(decision.get("passed")), bool(required), answer)
            answers[model] = {"chosen_options": [answer], "asked": False}
        if not asking:
            return answers
        if len(decisions) > 1:
            raise AirflowFailException(f"{', '.join(asking)} require approval in an instance of "
                                       f"{len(decisions)} markets; each must have an instance of its own")
        decision = decisions[asking[0]]
        hours = decision.get("approval_timeout_hours")
        if hours:
            self.response_timeout = timedelta(hours=float(hours))
        self.subject = f"Promote {decision.get('candidate')} to production of {decision.get('model')}?"
        self.body = (f"Gate: {decision.get('summary')}\n\nRun {context['run_id']}. Approve moves the production "
                     "alias; Reject keeps production as it is.")
        self.log.info("asking for approval of %s (%s); waiting up to %s", decision.get("candidate"),
                      decision.get("model"), self.response_timeout)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        # The person's answer is recorded; nothing is skipped: promote_or_keep records a Reject as a keep.
        result = HITLOperator.execute_complete(self, context=context, event=event)
        timed_out = not result.get("responded_by_user")
        # A resumed task is a new operator instance: the market's timeout is read from the gate again.
        ti = context["ti"]
        ((model, decision),) = (ti.xcom_pull(task_ids=self.gate_task_id, map_indexes=ti.map_index) or {}).items()
        hours = decision.get("approval_timeout_hours") or (
            self.response_timeout.total_seconds() / 3600 if self.response_timeout else None)
        if timed_out:
            self.log.warning("no answer within %s h: %s by default (production kept)", hours, result["chosen_options"])
        return {model: {**result, "asked": True, "timed_out": timed_out, "timeout_hours": hours}}
