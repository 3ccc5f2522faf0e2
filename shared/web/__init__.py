"""HTTP pieces both services share: error bodies, auth, request ids, body limits, metrics."""
