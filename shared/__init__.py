"""dSC shared package: settings, store, engines, rewards, tasks and the critique→revise sampler."""

__version__ = "0.1.0"
