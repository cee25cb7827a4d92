"""Drift watch (docs/drift.md): the people the app onboarded are re-checked, group by group, on a schedule.

model.py     what the roster keeps (one Membership per person and group the app onboarded), findings, sweeps
roster.py    keeping the roster when onboardings finish and offboards end them
sweep.py     the timer's sweep: pages of the roster fanned out as check messages on queue `drift`
checks.py    the re-verification of one group's members, sharing the group's reads (no welcome mail)
watch.py     the trigger's half: one message of queue `drift`, read against the roster
events.py    the drift event (a CloudEvent) published to the onboarding's ReplyTo, else the outcome queue
"""
