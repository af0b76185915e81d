-- Lets one statement carry out a step planned ahead and still fail as a whole when its effect
-- cannot happen: `sagad_require(ok, code, message)` is true when `ok` is, and otherwise raises
-- `message` with SQLSTATE `code`, which rolls back everything the statement did. sagad uses its
-- own codes (class SG, see `store::sqlstate`) and falls back to the step-by-step path on them.
CREATE FUNCTION sagad_require(ok boolean, code text, message text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
    END IF;
    RETURN true;
END
$$;
