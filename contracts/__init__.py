"""What workflows, activities, infra, the API and the CLI share: pydantic inputs and outputs, enums,
error-type and activity names. No I/O: nothing here imports a database, HTTP or provider client."""
