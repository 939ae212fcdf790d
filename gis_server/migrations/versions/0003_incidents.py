"""Incidents workflow (issue 6): the closed loop's columns, Open311 tokens, photos, indexes

The tables ``incidents`` and ``incident_events`` (0001) and their row-level security (0002)
exist; this revision adds what the seven-step loop, its time limits, escalation and the
indicators need. Categories are not a table: they live in a city-editable data file
(``data/categories.toml``) and each incident keeps its category code, department, time limit
and deadline, so indicators never need the file.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

STATES = ("reported", "filed", "rejected", "dispatched", "handling", "feedback", "closed",
          "evaluated", "parked")
CIRCULATIONS = ("micro", "small", "big")

COLUMNS = [
    # micro (community) → small (street) → big (district)
    sa.Column("circulation", sa.String(8), nullable=False, server_default="micro"),
    sa.Column("time_limit", sa.String(12)),  # "4h" / "20d": working hours / working days
    sa.Column("filed_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("feedback_at", sa.DateTime(timezone=True)),
    sa.Column("evaluated_at", sa.DateTime(timezone=True)),
    sa.Column("escalated_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.text("now()")),
    sa.Column("rework_count", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("return_count", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("extension_count", sa.SmallInteger, nullable=False, server_default="0"),
    # a pending extension request {amount, unit, reason, by, at}
    sa.Column("extension_request", postgresql.JSONB),
    # postponed (缓办): excluded from the on-time closure rate's denominator
    sa.Column("postponed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("evaluation", sa.SmallInteger),  # 1..5
    sa.Column("status_notes", sa.Text),
    sa.Column("reporter_contact", sa.Text),  # personal data: phone / e-mail
    sa.Column("attributes", postgresql.JSONB, nullable=False,
              server_default=sa.text("'{}'::jsonb")),  # Open311 attribute[...] answers
    sa.Column("media_url", sa.Text),
    sa.Column("photo_path", sa.Text),  # under data/uploads/
    sa.Column("photo_sha256", sa.String(64)),
    sa.Column("open311_token", sa.String(40)),
    sa.Column("duplicate_of", sa.BigInteger),
]


def upgrade() -> None:
    op.alter_column("incidents", "category", type_=sa.String(40))
    op.alter_column("incident_events", "action", type_=sa.String(24))
    for column in COLUMNS:
        op.add_column("incidents", column)
    op.create_foreign_key(op.f("fk_incidents_duplicate_of_incidents"), "incidents", "incidents",
                          ["duplicate_of"], ["id"], ondelete="SET NULL")
    states = ", ".join(f"'{s}'" for s in STATES)
    op.create_check_constraint(op.f("ck_incidents_status"), "incidents", f"status IN ({states})")
    circ = ", ".join(f"'{c}'" for c in CIRCULATIONS)
    op.create_check_constraint(op.f("ck_incidents_circulation"), "incidents", f"circulation IN ({circ})")
    op.create_check_constraint(op.f("ck_incidents_evaluation"), "incidents",
                               "evaluation IS NULL OR evaluation BETWEEN 1 AND 5")
    op.create_index("ux_incidents_open311_token", "incidents", ["open311_token"], unique=True,
                    postgresql_where=sa.text("open311_token IS NOT NULL"))
    op.create_index("ix_incidents_category", "incidents", ["category"])
    op.create_index("ix_incidents_filed_at", "incidents", ["filed_at"])
    # open incidents by deadline: the overdue list and automatic escalation
    op.create_index("ix_incidents_open_due", "incidents", ["due_at"],
                    postgresql_where=sa.text(
                        "status IN ('dispatched', 'handling', 'feedback')"))
    op.create_index("ix_incident_events_at", "incident_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_incident_events_at", table_name="incident_events")
    op.drop_index("ix_incidents_open_due", table_name="incidents")
    op.drop_index("ix_incidents_filed_at", table_name="incidents")
    op.drop_index("ix_incidents_category", table_name="incidents")
    op.drop_index("ux_incidents_open311_token", table_name="incidents")
    for name in ("evaluation", "circulation", "status"):
        op.drop_constraint(op.f(f"ck_incidents_{name}"), "incidents", type_="check")
    op.drop_constraint(op.f("fk_incidents_duplicate_of_incidents"), "incidents", type_="foreignkey")
    for column in reversed(COLUMNS):
        op.drop_column("incidents", column.name)
    op.alter_column("incident_events", "action", type_=sa.String(16))
    op.alter_column("incidents", "category", type_=sa.String(16))
