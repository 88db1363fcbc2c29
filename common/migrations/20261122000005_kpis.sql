-- KPIs: how an application's usages of one unit are presented as monthly values (the `KPIName`
-- of the aggregatedMonthly… endpoints). The daily function folds a day's usages, the monthly
-- function folds the days of a month; `pre_fill` says what a day without usages counts as
-- (ZERO: 0, NONE: skipped, LAST: the previous day's value). Values are multiplied by
-- `unit_conversion_factor` when presented. The owner is the provider tenant that registered the
-- KPI. `version` grows with every update.
CREATE TABLE kpis (
    kpi_id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                         text NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    display_name                 text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 256),
    application                  text NOT NULL CHECK (length(application) BETWEEN 1 AND 256),
    application_display_name     text NOT NULL CHECK (length(application_display_name) BETWEEN 1 AND 256),
    unit                         text NOT NULL CHECK (length(unit) BETWEEN 1 AND 256),
    owner_tenant_id              text NOT NULL REFERENCES tenants (tenant_id),
    aggregation_function_daily   text NOT NULL DEFAULT 'SUM'
        CHECK (aggregation_function_daily IN ('SUM', 'COUNT', 'MIN', 'MAX', 'AVG', 'LAST')),
    aggregation_function_monthly text NOT NULL DEFAULT 'SUM'
        CHECK (aggregation_function_monthly IN ('SUM', 'COUNT', 'MIN', 'MAX', 'AVG', 'LAST')),
    pre_fill                     text NOT NULL DEFAULT 'ZERO' CHECK (pre_fill IN ('ZERO', 'NONE', 'LAST')),
    unit_conversion_factor       numeric NOT NULL DEFAULT 1 CHECK (unit_conversion_factor > 0),
    version                      integer NOT NULL DEFAULT 1,
    created_at                   timestamptz NOT NULL DEFAULT now(),
    updated_at                   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kpis_application_name_key UNIQUE (application, name)
);
