"""The job catalogue and the worker registry name the same jobs; every enqueuer finds its queue."""

from __future__ import annotations

import inspect

import pytest

from shared.infra.config import load_settings
from shared.jobs.catalogue import JOB_CATALOGUE, JOBS_BY_NAME, jobs_on, queue_of
from shared.jobs.queues import ALL_QUEUES, JOB_QUEUES, SCHEDULER
from worker.registry import JOB_FUNCTIONS, functions_for


def test_every_catalogue_entry_has_a_function_and_every_function_an_entry() -> None:
    assert set(JOBS_BY_NAME) == set(JOB_FUNCTIONS)
    assert len(JOBS_BY_NAME) == len(JOB_CATALOGUE), "a job name appears twice in the catalogue"


def test_every_job_queue_has_jobs_and_the_scheduler_none() -> None:
    for queue in JOB_QUEUES:
        assert jobs_on(queue), queue
    assert jobs_on(SCHEDULER) == ()
    assert {spec.queue for spec in JOB_CATALOGUE} <= set(ALL_QUEUES)


@pytest.mark.parametrize("spec", JOB_CATALOGUE, ids=lambda spec: spec.name)
def test_registered_functions_carry_the_catalogue_policy(spec: object) -> None:
    from shared.jobs.catalogue import JobSpec

    assert isinstance(spec, JobSpec)
    registered = {f.name: f for f in functions_for(spec.queue, load_settings({}))}
    arq_function = registered[spec.name]
    assert arq_function.max_tries == spec.policy.max_tries
    assert arq_function.timeout_s == spec.policy.arq_timeout_seconds
    assert inspect.iscoroutinefunction(JOB_FUNCTIONS[spec.name])


def test_job_policies_override_the_catalogue_default() -> None:
    settings = load_settings({"JOB_POLICIES": '{"send_email": {"max_tries": 9}}'})
    (send_email,) = functions_for("email_send", settings)
    assert send_email.max_tries == 9 != JOBS_BY_NAME["send_email"].policy.max_tries


def test_unknown_function_has_no_queue() -> None:
    assert queue_of("distribute_lead") == "distribute_lead"
    assert queue_of("no_such_job") is None
