//! Moodle web services over REST: `wstoken`, `wsfunction` and `moodlewsrestformat=json` on every call,
//! PHP bracket notation for list parameters, and the error envelope — HTTP 200 with
//! `{"exception", "errorcode", "message"}` — read as an error, never as data. Only
//! `core_enrol_get_enrolled_users` pages (`limitfrom` / `limitnumber`, no total: a short page ends it).

use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::settings::Settings;
use syncfleet_sdk::{
    http::{HttpClient, HttpError},
    step::StepError,
};

#[derive(Debug, thiserror::Error)]
pub enum MoodleError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The site answered its error envelope.
    #[error("{function}: Moodle answered {exception} ({errorcode}): {message}")]
    Exception { function: String, exception: String, errorcode: String, message: String },
    /// The answer was not the shape the function returns.
    #[error("{function}: {message}")]
    Shape { function: String, message: String },
}

impl MoodleError {
    /// The Moodle error code of an envelope (`invalidtoken`, …).
    pub fn errorcode(&self) -> Option<&str> {
        match self {
            MoodleError::Exception { errorcode, .. } => Some(errorcode),
            _ => None,
        }
    }
}

impl From<MoodleError> for StepError {
    /// An envelope or an answer of the wrong shape is the site's considered answer: retrying the
    /// same call gets the same one. Transport failures follow the HTTP client's verdict.
    fn from(e: MoodleError) -> Self {
        match &e {
            MoodleError::Http(http) => http.verdict().step_error(e),
            MoodleError::Exception { .. } | MoodleError::Shape { .. } => StepError::permanent(e),
        }
    }
}

/// A category as `core_course_get_categories` returns it (`idnumber`, `visible`, `timemodified` only
/// with the manage capability).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Category {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub idnumber: Option<String>,
    pub parent: i64,
    #[serde(default)]
    pub sortorder: Option<i64>,
    pub depth: i64,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub visible: Option<i64>,
    #[serde(default)]
    pub timemodified: Option<i64>,
}

/// A course as `core_course_get_courses_by_field` returns it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Course {
    pub id: i64,
    pub fullname: String,
    pub shortname: String,
    #[serde(default)]
    pub idnumber: Option<String>,
    pub categoryid: i64,
    #[serde(default)]
    pub visible: Option<i64>,
    #[serde(default)]
    pub startdate: Option<i64>,
    #[serde(default)]
    pub timemodified: Option<i64>,
}

/// The user fields `core_enrol_get_enrolled_users` is asked for (its `userfields` option): those
/// `moodle_users` and `moodle_enrollments` hold (`lastcourseaccess` comes with `lastaccess`; `id`
/// always). Without the option Moodle sends every field, among them the user's `enrolledcourses`
/// (every course of the user, looked up per user), which is most of the answer and none of ours.
pub const ENROLLED_FIELDS: &str = "id,username,firstname,lastname,email,idnumber,firstaccess,lastaccess,groups,roles";

/// One step's (or request's) view of a Moodle site.
pub struct Moodle<'a> {
    client: &'a HttpClient,
    url: String,
    token: String,
    page_size: u32,
    cancel: CancellationToken,
}

impl<'a> Moodle<'a> {
    pub fn new(settings: &Settings, client: &'a HttpClient, cancel: CancellationToken) -> Result<Self, String> {
        Ok(Moodle {
            client,
            url: settings.moodle.base_url.clone(),
            token: settings.token(client.secrets()?)?,
            page_size: settings.moodle.page_size,
            cancel,
        })
    }

    /// Calls `function` with `params` and returns its JSON answer; an error envelope is an error.
    pub async fn call(&self, function: &str, params: &[(String, String)]) -> Result<Value, MoodleError> {
        let mut query = vec![
            ("wstoken".to_owned(), self.token.clone()),
            ("wsfunction".to_owned(), function.to_owned()),
            ("moodlewsrestformat".to_owned(), "json".to_owned()),
        ];
        query.extend(params.iter().cloned());
        let body = self.client.get_json(&self.url, &[], &query, &self.cancel).await?;
        if let Some(exception) = body.get("exception").and_then(Value::as_str) {
            let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(MoodleError::Exception {
                function: function.to_owned(),
                exception: exception.to_owned(),
                errorcode: text("errorcode"),
                message: text("message"),
            });
        }
        Ok(body)
    }

    /// Every category (no criteria).
    pub async fn categories(&self) -> Result<Vec<Category>, MoodleError> {
        const F: &str = "core_course_get_categories";
        let body = self.call(F, &[]).await?;
        serde_json::from_value(body).map_err(|e| shape(F, format!("not a list of categories: {e}")))
    }

    /// The courses of one category.
    pub async fn courses_in(&self, category: &str) -> Result<Vec<Course>, MoodleError> {
        const F: &str = "core_course_get_courses_by_field";
        let params = [("field".to_owned(), "category".to_owned()), ("value".to_owned(), category.to_owned())];
        let mut body = self.call(F, &params).await?;
        let courses = body.get_mut("courses").map(Value::take).ok_or_else(|| shape(F, "no `courses` list".into()))?;
        serde_json::from_value(courses).map_err(|e| shape(F, format!("not a list of courses: {e}")))
    }

    /// The enrolled users of a course, with their groups and roles, page by page to the end: only
    /// the fields [`ENROLLED_FIELDS`] names.
    pub async fn enrolled_users(&self, course: &str) -> Result<Vec<Value>, MoodleError> {
        const F: &str = "core_enrol_get_enrolled_users";
        let mut out = Vec::new();
        let mut pages = self.client.pages();
        loop {
            pages.next(None)?;
            let params = [
                ("courseid".to_owned(), course.to_owned()),
                ("options[0][name]".to_owned(), "limitfrom".to_owned()),
                ("options[0][value]".to_owned(), out.len().to_string()),
                ("options[1][name]".to_owned(), "limitnumber".to_owned()),
                ("options[1][value]".to_owned(), self.page_size.to_string()),
                ("options[2][name]".to_owned(), "userfields".to_owned()),
                ("options[2][value]".to_owned(), ENROLLED_FIELDS.to_owned()),
            ];
            let Value::Array(users) = self.call(F, &params).await? else {
                return Err(shape(F, format!("course {course}: not a list of users")));
            };
            let received = users.len();
            out.extend(users);
            if received < self.page_size as usize {
                return Ok(out);
            }
        }
    }

    /// The user with this username, if the site has one.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<Value>, MoodleError> {
        const F: &str = "core_user_get_users_by_field";
        let params = [("field".to_owned(), "username".to_owned()), ("values[0]".to_owned(), username.to_owned())];
        match self.call(F, &params).await? {
            Value::Array(users) => Ok(users.into_iter().find(|u| u["username"] == username)),
            _ => Err(shape(F, "not a list of users".into())),
        }
    }
}

fn shape(function: &str, message: String) -> MoodleError {
    MoodleError::Shape { function: function.to_owned(), message }
}
