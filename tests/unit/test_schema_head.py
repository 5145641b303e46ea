"""The schema head the server checks against is the one the migrations really end at."""

import schema


def test_head_constant_matches_alembic() -> None:
    assert schema.HEAD == schema.current_head()
