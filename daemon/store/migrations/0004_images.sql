-- Images: the digest each attempt ran (as its agent reported it: a repo digest where the image has
-- one, else its id), and the latest digest reported for each image reference as steps write it
-- ("registry.example.com/scoring:1.4"), so that reuse can tell when a tag moved to other content.
ALTER TABLE attempts ADD COLUMN image_digest text;

CREATE TABLE images (
    reference text PRIMARY KEY,
    digest    text NOT NULL,
    -- When the daemon applied the report (its own clock: agents' clocks may disagree).
    seen_at   timestamptz NOT NULL
);
